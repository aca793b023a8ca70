//! tidemark-rules: Prometheus recording and alerting rules over the storage traits.
//!
//! - [`file`]: rule files (`groups:` of `record`/`alert` rules) and `promtool check rules`
//!   validation.
//! - [`template`]: the Go-template subset of labels and annotations.
//! - [`group`]: evaluation of one group (recording output, staleness, alert states, `ALERTS`,
//!   `ALERTS_FOR_STATE`, restore of `for` state).
//! - [`manager`]: the set of groups from `rule_files`, their schedule, reload, and the JSON of
//!   `/api/v1/rules` and `/api/v1/alerts`.
//! - [`notifier`]: the Alertmanager API v2 client (queue, batching, resend).
//! - [`slo`]: `slos:` generating SRE-workbook multi-window multi-burn-rate rules.
//! - [`unittest`]: promtool's rule unit-test format (`tidemark test rules`).

mod error;
pub mod file;
pub mod fuzzing;
pub mod group;
pub mod manager;
pub mod notifier;
pub mod slo;
pub mod template;
pub mod unittest;

pub use error::{Error, Result};
pub use group::{Alert, AlertState, EvalContext, Group, GroupOptions};
pub use manager::{GroupOwner, RuleManager, RulesFilter, load_groups};
pub use notifier::Notifier;
