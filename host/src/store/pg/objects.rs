//! The PostgreSQL side of [`Objects`]: named objects, components, schedule
//! slots and webhook deliveries.

use super::rows::{all, delivery, object};
use super::*;

impl PostgresStore {
    fn component_rows(
        &self,
        tail: &'static str,
        digest: Option<String>,
    ) -> Result<Vec<ComponentRow>, StoreError> {
        self.read(move |c| {
            let sql =
                format!("SELECT digest, size_bytes, manifest, created_us FROM components {tail}");
            let rows = match &digest {
                Some(d) => c.query(&sql, &[d])?,
                None => c.query(&sql, &[])?,
            };
            rows.iter()
                .map(|r| {
                    Ok(ComponentRow {
                        digest: r.try_get(0)?,
                        size_bytes: r.try_get::<_, i64>(1)? as u64,
                        manifest: serde_json::from_str(r.try_get(2)?)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_at: r.try_get(3)?,
                    })
                })
                .collect()
        })
    }
}

impl Objects for PostgresStore {
    fn held_slots(&self, now: TimestampMicros) -> Result<Vec<SlotRow>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT lease, name, slots, flow_run, taken_us FROM limit_slots
                 WHERE {} ORDER BY taken_us, name",
                super::super::sql::live_slot("$1")
            );
            all(c.query(&sql, &[&now])?, |r| {
                Ok(SlotRow {
                    lease: uuid::Uuid::from_bytes(super::rows::id16(r.try_get(0)?)?),
                    name: r.try_get(1)?,
                    slots: u32::try_from(r.try_get::<_, i64>(2)?).unwrap_or(u32::MAX),
                    flow_run: FlowRunId::from_bytes(super::rows::id16(r.try_get(3)?)?),
                    taken_at: r.try_get(4)?,
                })
            })
        })
    }

    fn rate_marks(&self) -> Result<Vec<(String, TimestampMicros)>, StoreError> {
        self.read(move |c| {
            all(
                c.query("SELECT name, tat_us FROM limit_rates ORDER BY name", &[])?,
                |r| Ok((r.try_get(0)?, r.try_get(1)?)),
            )
        })
    }

    fn deployment_versions(
        &self,
        deployment: &str,
    ) -> Result<Vec<DeploymentVersionRow>, StoreError> {
        let deployment = deployment.to_string();
        self.read(move |c| {
            all(
                c.query(
                    "SELECT deployment, version, body, created_by, note, created_us FROM deployment_versions
                     WHERE deployment = $1 ORDER BY version",
                    &[&deployment],
                )?,
                |r| {
                    Ok(DeploymentVersionRow {
                        deployment: r.try_get(0)?,
                        version: r.try_get::<_, i64>(1)? as u32,
                        body: r.try_get(2)?,
                        created_by: r.try_get(3)?,
                        note: r.try_get(4)?,
                        created_at: r.try_get(5)?,
                    })
                },
            )
        })
    }

    fn component_wasm(&self, digest: &ComponentDigest) -> Result<Option<Vec<u8>>, StoreError> {
        let digest = digest.as_str().to_string();
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT wasm FROM component_blobs WHERE digest = $1",
                &[&digest],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn object(&self, kind: ObjectKind, name: &str) -> Result<Option<ObjectRow>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            c.query_opt(
                "SELECT name, body, created_us, updated_us FROM objects WHERE kind = $1 AND name = $2",
                &[&kind.as_str(), &name],
            )?
            .as_ref()
            .map(object)
            .transpose()
        })
    }

    fn objects(&self, kind: ObjectKind) -> Result<Vec<ObjectRow>, StoreError> {
        self.read(move |c| {
            all(
                c.query(
                    "SELECT name, body, created_us, updated_us FROM objects WHERE kind = $1 ORDER BY name",
                    &[&kind.as_str()],
                )?,
                object,
            )
        })
    }

    fn components(&self) -> Result<Vec<ComponentRow>, StoreError> {
        self.component_rows("ORDER BY created_us DESC", None)
    }

    fn component(&self, digest: &ComponentDigest) -> Result<Option<ComponentRow>, StoreError> {
        Ok(self
            .component_rows("WHERE digest = $1", Some(digest.as_str().to_string()))?
            .pop())
    }

    fn last_schedule_slot(
        &self,
        deployment: &str,
        schedule_key: &str,
    ) -> Result<Option<TimestampMicros>, StoreError> {
        let (deployment, schedule_key) = (deployment.to_string(), schedule_key.to_string());
        self.read(move |c| {
            Ok(c.query_one(
                "SELECT max(scheduled_us) FROM schedule_slots WHERE deployment = $1 AND schedule_key = $2",
                &[&deployment, &schedule_key],
            )?
            .try_get(0)?)
        })
    }

    fn deployments_with_slots_after(
        &self,
        after: TimestampMicros,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |c| {
            c.query(
                "SELECT DISTINCT deployment FROM schedule_slots WHERE scheduled_us > $1",
                &[&after],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn due_deliveries(
        &self,
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(move |c| {
            all(
                c.query(
                    &format!(
                        "{DELIVERY_SELECT} WHERE status = 'pending' AND next_attempt_us <= $1 ORDER BY next_attempt_us LIMIT $2"
                    ),
                    &[&now, &(limit as i64)],
                )?,
                delivery,
            )
        })
    }

    fn deliveries(&self, automation: &str, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        let automation = automation.to_string();
        self.read(move |c| {
            all(
                c.query(
                    &format!("{DELIVERY_SELECT} WHERE automation = $1 ORDER BY id DESC LIMIT $2"),
                    &[&automation, &(limit as i64)],
                )?,
                delivery,
            )
        })
    }
}
