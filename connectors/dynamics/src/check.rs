//! `check` and `check --connect` for a Dataverse target. Offline it states the environment,
//! Web API version, credentials and write mode from the settings; with `--connect` it gets a
//! token, calls `WhoAmI`, in upsert mode requires an Active alternate key made of exactly
//! the key column, and verifies that every mapped column and the key column exist on `lead`.
//!
//! It only reads (metadata and `WhoAmI`), never writes a lead.

use leadsync_core::oauth::AccessToken;
use leadsync_core::{CheckError, CheckReport};
use serde_json::Value;

use crate::classify::classify;
use crate::settings::WriteMode;
use crate::DynamicsConnector;

impl DynamicsConnector {
    /// What `Connector::check` reports; `connect` asks the environment.
    pub(crate) async fn check_environment(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut r = CheckReport::default();
        r.verified.push(format!(
            "environment {} (Web API {})",
            leadsync_core::http::redact_url(&self.org),
            self.api_version
        ));
        r.verified.push(format!(
            "app {} authenticates with a {} at {}",
            self.client_id,
            self.auth_kind,
            leadsync_core::http::redact_url(&self.token_url)
        ));
        r.verified.push(match self.mode {
            WriteMode::Upsert => format!(
                "upsert on the alternate key over {}, up to {} lead(s) per $batch",
                self.key_column, self.batch_size
            ),
            WriteMode::CreateOnly => format!(
                "create-only, retried leads looked up by {} first, up to {} lead(s) per $batch",
                self.key_column, self.batch_size
            ),
        });
        if !connect {
            return Ok(r);
        }
        let token = self.tokens.get().await.map_err(|e| CheckError {
            what: "token".into(),
            reason: format!("{} ({})", e.message, e.code),
        })?;
        r.verified.push("token obtained from Entra ID".into());
        let who = self.get_json(&token, "WhoAmI", "WhoAmI").await?;
        let user = who["UserId"].as_str().unwrap_or("?");
        r.verified
            .push(format!("WhoAmI answered: application user {user}"));
        if self.mode == WriteMode::Upsert {
            let keys = self
                .get_json(
                    &token,
                    "EntityDefinitions(LogicalName='lead')/Keys?$select=LogicalName,KeyAttributes,EntityKeyIndexStatus",
                    "alternate key",
                )
                .await?;
            let found = keys["value"].as_array().and_then(|a| {
                a.iter().find(|k| {
                    k["KeyAttributes"].as_array().is_some_and(|attrs| {
                        attrs.len() == 1 && attrs[0].as_str() == Some(self.key_column.as_str())
                    })
                })
            });
            let Some(key) = found else {
                return Err(CheckError {
                    what: "alternate key".into(),
                    reason: format!(
                        "lead has no alternate key made of exactly the column {}; define one, or set mode = \"create_only\"",
                        self.key_column
                    ),
                });
            };
            let status = key["EntityKeyIndexStatus"].as_str().unwrap_or("unknown");
            if status != "Active" {
                return Err(CheckError {
                    what: "alternate key".into(),
                    reason: format!(
                        "{} is {status}, not Active (Dataverse builds the key's index in the background; a Failed key must be reactivated)",
                        key["LogicalName"].as_str().unwrap_or("the key")
                    ),
                });
            }
            r.verified.push(format!(
                "alternate key {} on {} is Active",
                key["LogicalName"].as_str().unwrap_or("?"),
                self.key_column
            ));
        }
        let attrs = self
            .get_json(
                &token,
                "EntityDefinitions(LogicalName='lead')/Attributes?$select=LogicalName",
                "lead attributes",
            )
            .await?;
        let names: std::collections::HashSet<&str> = attrs["value"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["LogicalName"].as_str()).collect())
            .unwrap_or_default();
        let mut wanted: Vec<&str> = self
            .mapping
            .rules
            .iter()
            .map(|r| r.crm_field.as_str())
            .collect();
        wanted.push(&self.key_column);
        wanted.sort_unstable();
        wanted.dedup();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|f| !f.contains('@') && !names.contains(f))
            .collect();
        if !missing.is_empty() {
            return Err(CheckError {
                what: "mapping".into(),
                reason: format!("lead has no column(s) {}", missing.join(", ")),
            });
        }
        r.verified.push(format!(
            "all {} mapped column(s) exist on lead",
            wanted.len()
        ));
        Ok(r)
    }

    async fn get_json(
        &self,
        token: &AccessToken,
        path: &str,
        what: &str,
    ) -> Result<Value, CheckError> {
        let err = |reason: String| CheckError {
            what: what.to_string(),
            reason,
        };
        let rb = self
            .request(reqwest::Method::GET, &format!("{}/{path}", self.api), token)
            .map_err(|f| err(f.message))?;
        let resp = self.send(rb).await.map_err(|f| err(f.message))?;
        if resp.status == 401 {
            return Err(err(
                "HTTP 401: the token was refused; is the app registration an application user with a security role in this environment?".into(),
            ));
        }
        if resp.status != 200 {
            let f = classify(resp.status, &resp.headers, &resp.body);
            return Err(err(format!(
                "HTTP {} ({}): {}",
                resp.status, f.code, f.message
            )));
        }
        serde_json::from_str(&resp.body).map_err(|e| err(format!("answer is not JSON: {e}")))
    }
}
