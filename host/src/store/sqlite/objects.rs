//! The SQLite side of [`Objects`]: named objects, components, schedule slots and webhook deliveries.

use super::*;

impl Objects for SqliteStore {
    fn deployment_versions(
        &self,
        deployment: &str,
    ) -> Result<Vec<DeploymentVersionRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT deployment, version, body, created_by, note, created_us FROM deployment_versions
                 WHERE deployment = ?1 ORDER BY version",
            )?;
            stmt.query_map([deployment], |r| {
                Ok(DeploymentVersionRow {
                    deployment: r.get(0)?,
                    version: r.get(1)?,
                    body: r.get(2)?,
                    created_by: r.get(3)?,
                    note: r.get(4)?,
                    created_at: r.get(5)?,
                })
            })?
            .collect()
        })
    }

    fn held_slots(&self, now: TimestampMicros) -> Result<Vec<SlotRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT lease, name, slots, flow_run, taken_us FROM limit_slots
                 WHERE {} ORDER BY taken_us, name",
                super::super::sql::live_slot("?1")
            ))?;
            stmt.query_map([now], |r| {
                Ok(SlotRow {
                    lease: uuid::Uuid::from_bytes(row_blob16(r, 0)?),
                    name: r.get(1)?,
                    slots: r.get(2)?,
                    flow_run: FlowRunId::from_bytes(row_blob16(r, 3)?),
                    taken_at: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    fn rate_marks(&self) -> Result<Vec<(String, TimestampMicros)>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT name, tat_us FROM limit_rates ORDER BY name")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    fn component_wasm(&self, _digest: &ComponentDigest) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    /// One named object, if it exists.
    fn object(&self, kind: ObjectKind, name: &str) -> Result<Option<ObjectRow>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT name, body, created_us, updated_us FROM objects WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
                ObjectRow::from_row,
            )
            .optional()
        })
    }

    /// All objects of a kind, by name.
    fn objects(&self, kind: ObjectKind) -> Result<Vec<ObjectRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, body, created_us, updated_us FROM objects WHERE kind = ?1 ORDER BY name",
            )?;
            stmt.query_map([kind.as_str()], ObjectRow::from_row)?.collect()
        })
    }

    /// Uploaded components, newest first: (digest, size, manifest).
    fn components(&self) -> Result<Vec<ComponentRow>, StoreError> {
        self.component_rows("ORDER BY created_us DESC", None)
    }

    /// One uploaded component, if it is stored.
    fn component(&self, digest: &ComponentDigest) -> Result<Option<ComponentRow>, StoreError> {
        Ok(self
            .component_rows("WHERE digest = ?1", Some(digest.as_str()))?
            .pop())
    }

    /// The latest time a schedule of a deployment made a run for.
    fn last_schedule_slot(
        &self,
        deployment: &str,
        schedule_key: &str,
    ) -> Result<Option<TimestampMicros>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT max(scheduled_us) FROM schedule_slots WHERE deployment = ?1 AND schedule_key = ?2",
            )?
            .query_row(params![deployment, schedule_key], |r| r.get(0))
        })
    }

    /// Deployments that have runs made ahead by their schedules, waiting
    /// after `after` (to drop those of deployments that are gone).
    fn deployments_with_slots_after(
        &self,
        after: TimestampMicros,
    ) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT deployment FROM schedule_slots WHERE scheduled_us > ?1",
            )?;
            stmt.query_map([after], |r| r.get(0))?.collect()
        })
    }

    /// The latest scheduled time among a deployment's runs.
    /// Pending deliveries due by `now`, oldest first.
    fn due_deliveries(
        &self,
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{DELIVERY_SELECT} WHERE status = 'pending' AND next_attempt_us <= ?1 ORDER BY next_attempt_us LIMIT ?2"
            ))?;
            stmt.query_map(params![now, limit as i64], DeliveryRow::from_row)?
                .collect()
        })
    }

    /// An automation's deliveries, newest first.
    fn deliveries(&self, automation: &str, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{DELIVERY_SELECT} WHERE automation = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            stmt.query_map(params![automation, limit as i64], DeliveryRow::from_row)?
                .collect()
        })
    }
}

impl SqliteStore {
    fn component_rows(
        &self,
        tail: &str,
        digest: Option<&str>,
    ) -> Result<Vec<ComponentRow>, StoreError> {
        let rows: Vec<(String, i64, String, i64)> = self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT digest, size_bytes, manifest, created_us FROM components {tail}"
            ))?;
            let args: Vec<&str> = digest.into_iter().collect();
            stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })?;
        rows.into_iter()
            .map(|(digest, size, manifest, created)| {
                Ok(ComponentRow {
                    digest,
                    size_bytes: size as u64,
                    manifest: serde_json::from_str(&manifest)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    created_at: created,
                })
            })
            .collect()
    }
}
