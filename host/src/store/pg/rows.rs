//! Reading rows out of PostgreSQL.

use super::*;
use postgres::Row;

pub(super) fn id16(bytes: &[u8]) -> Result<[u8; 16], StoreError> {
    bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "expected a 16-byte id, found {} bytes",
            bytes.len()
        ))
    })
}

fn state(text: &str) -> Result<RunState, StoreError> {
    text.parse()
        .map_err(|e: crate::model::UnknownState| StoreError::Corrupt(e.to_string()))
}

fn json_list(text: Option<String>) -> Vec<String> {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub(super) fn flow_run(r: &Row) -> Result<FlowRunRow, StoreError> {
    Ok(FlowRunRow {
        id: FlowRunId::from_bytes(id16(r.try_get(0)?)?),
        parent_flow_run: r
            .try_get::<_, Option<&[u8]>>(1)?
            .map(id16)
            .transpose()?
            .map(FlowRunId::from_bytes),
        component: r.try_get(2)?,
        flow_name: r.try_get(3)?,
        params: r.try_get(4)?,
        state: state(r.try_get(5)?)?,
        message: r.try_get(6)?,
        failure_kind: r
            .try_get::<_, Option<&str>>(7)?
            .and_then(|k| k.parse().ok()),
        result: r.try_get(8)?,
        attempt: r.try_get::<_, i64>(9)? as u32,
        host: r.try_get(10)?,
        created_at: r.try_get(11)?,
        started_at: r.try_get(12)?,
        ended_at: r.try_get(13)?,
        fuel_used: r.try_get::<_, i64>(14)? as u64,
        peak_memory: r.try_get::<_, i64>(15)? as u64,
        deployment: r.try_get(16)?,
        tags: json_list(r.try_get(17)?),
        scheduled_at: r.try_get(18)?,
        work_pool: r.try_get(19)?,
        work_queue: r.try_get(20)?,
        secret_grants: json_list(r.try_get(21)?),
        lease_holder: r.try_get(22)?,
        lease_epoch: r.try_get::<_, i64>(23)? as u64,
        lease_expires_at: r.try_get(24)?,
        deployment_version: r.try_get::<_, Option<i64>>(25)?.map(|v| v as u32),
    })
}

pub(super) fn task_run(r: &Row) -> Result<TaskRunRow, StoreError> {
    Ok(TaskRunRow {
        id: TaskRunId::from_bytes(id16(r.try_get(0)?)?),
        flow_run: FlowRunId::from_bytes(id16(r.try_get(1)?)?),
        call_seq: r.try_get::<_, i64>(2)? as u64,
        task_name: r.try_get(3)?,
        input: r.try_get(4)?,
        output: r.try_get(5)?,
        state: state(r.try_get(6)?)?,
        failure_kind: r
            .try_get::<_, Option<&str>>(7)?
            .and_then(|k| k.parse().ok()),
        message: r.try_get(8)?,
        attempts: r.try_get::<_, i64>(9)? as u32,
        fuel_used: r.try_get::<_, i64>(10)? as u64,
        peak_memory: r.try_get::<_, i64>(11)? as u64,
        created_at: r.try_get(12)?,
        started_at: r.try_get(13)?,
        ended_at: r.try_get(14)?,
        next_attempt_at: r.try_get(15)?,
        cached_from: r
            .try_get::<_, Option<&[u8]>>(16)?
            .map(id16)
            .transpose()?
            .map(TaskRunId::from_bytes),
        host: r.try_get(17)?,
        input_sha256: r.try_get(18)?,
    })
}

pub(super) fn delivery(r: &Row) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        id: r.try_get(0)?,
        automation: r.try_get(1)?,
        flow_run: FlowRunId::from_bytes(id16(r.try_get(2)?)?),
        event: r.try_get(3)?,
        payload: r.try_get(4)?,
        status: r.try_get(5)?,
        attempts: r.try_get::<_, i64>(6)? as u32,
        next_attempt_at: r.try_get(7)?,
        last_error: r.try_get(8)?,
        response_code: r.try_get::<_, Option<i64>>(9)?.map(|c| c as u16),
        created_at: r.try_get(10)?,
        delivered_at: r.try_get(11)?,
    })
}

pub(super) fn object(r: &Row) -> Result<ObjectRow, StoreError> {
    Ok(ObjectRow {
        name: r.try_get(0)?,
        body: r.try_get(1)?,
        created_at: r.try_get(2)?,
        updated_at: r.try_get(3)?,
    })
}

pub(super) fn state_of(text: &str) -> Result<RunState, StoreError> {
    state(text)
}

/// Reads every row with `f`, stopping at the first bad one.
pub(super) fn all<T>(
    rows: Vec<Row>,
    f: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}
