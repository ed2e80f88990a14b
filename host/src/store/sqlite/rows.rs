//! Reading rows out of SQLite.

use super::*;

impl DeliveryRow {
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let run: Vec<u8> = r.get(2)?;
        Ok(DeliveryRow {
            id: r.get(0)?,
            automation: r.get(1)?,
            flow_run: FlowRunId::from_bytes(run.try_into().unwrap_or([0; 16])),
            event: r.get(3)?,
            payload: r.get(4)?,
            status: r.get(5)?,
            attempts: r.get(6)?,
            next_attempt_at: r.get(7)?,
            last_error: r.get(8)?,
            response_code: r.get(9)?,
            created_at: r.get(10)?,
            delivered_at: r.get(11)?,
        })
    }
}

impl FlowRunRow {
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(FlowRunRow {
            id: FlowRunId::from_bytes(row_blob16(r, 0)?),
            parent_flow_run: r
                .get::<_, Option<Vec<u8>>>(1)?
                .and_then(|b| blob16(&b).ok())
                .map(FlowRunId::from_bytes),
            component: r.get(2)?,
            flow_name: r.get(3)?,
            params: r.get(4)?,
            state: row_state(r, 5)?,
            message: r.get(6)?,
            failure_kind: r.get::<_, Option<String>>(7)?.and_then(|k| k.parse().ok()),
            result: r.get(8)?,
            attempt: r.get(9)?,
            host: r.get(10)?,
            created_at: r.get(11)?,
            started_at: r.get(12)?,
            ended_at: r.get(13)?,
            fuel_used: r.get::<_, i64>(14)? as u64,
            peak_memory: r.get::<_, i64>(15)? as u64,
            deployment: r.get(16)?,
            tags: r
                .get::<_, Option<String>>(17)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            scheduled_at: r.get(18)?,
            work_pool: r.get(19)?,
            work_queue: r.get(20)?,
            secret_grants: r
                .get::<_, Option<String>>(21)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            lease_holder: r.get(22)?,
            lease_epoch: r.get::<_, i64>(23)? as u64,
            lease_expires_at: r.get(24)?,
            deployment_version: r.get(25)?,
        })
    }
}

impl TaskRunRow {
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(TaskRunRow {
            id: TaskRunId::from_bytes(row_blob16(r, 0)?),
            flow_run: FlowRunId::from_bytes(row_blob16(r, 1)?),
            call_seq: r.get::<_, i64>(2)? as u64,
            task_name: r.get(3)?,
            input: r.get(4)?,
            output: r.get(5)?,
            state: row_state(r, 6)?,
            failure_kind: r.get::<_, Option<String>>(7)?.and_then(|k| k.parse().ok()),
            message: r.get(8)?,
            attempts: r.get(9)?,
            fuel_used: r.get::<_, i64>(10)? as u64,
            peak_memory: r.get::<_, i64>(11)? as u64,
            created_at: r.get(12)?,
            started_at: r.get(13)?,
            ended_at: r.get(14)?,
            next_attempt_at: r.get(15)?,
            cached_from: r
                .get::<_, Option<Vec<u8>>>(16)?
                .and_then(|b| blob16(&b).ok())
                .map(TaskRunId::from_bytes),
            host: r.get(17)?,
            input_sha256: r.get(18)?,
        })
    }
}

impl ObjectRow {
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ObjectRow {
            name: r.get(0)?,
            body: r.get(1)?,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
        })
    }
}
