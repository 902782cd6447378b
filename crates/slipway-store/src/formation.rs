//! Formation changes: quantities and dyno sizes of process types, all or nothing.

use crate::{now_ms, Formation, Result, Store, StoreError};

/// One process type's change; `None` leaves that part as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormationUpdate {
    pub process_type: String,
    pub quantity: Option<i64>,
    pub size: Option<String>,
}

impl Store {
    /// Applies every update in one transaction; a type the formation lacks fails them all.
    pub async fn update_formation(
        &self,
        app_id: &str,
        updates: &[FormationUpdate],
    ) -> Result<Vec<Formation>> {
        let mut tx = self.write_tx().await?;
        for u in updates {
            let done = sqlx::query(
                "UPDATE formation SET quantity = COALESCE($1, quantity), size = COALESCE($2, size), \
                 updated_at = $3 WHERE app_id = $4 AND process_type = $5",
            )
            .bind(u.quantity)
            .bind(u.size.as_deref())
            .bind(now_ms())
            .bind(app_id)
            .bind(&u.process_type)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!(
                    "process type {}",
                    u.process_type
                )));
            }
        }
        tx.commit().await?;
        self.formation(app_id).await
    }
}
