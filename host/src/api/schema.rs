//! What the OpenAPI document cannot take from a real type.
//!
//! The API's own request and reply structs (`api::wire`, and the few kept
//! beside their handlers) derive `ToSchema` themselves. What is left here:
//! the raw `.wasm` body, and schema-only shapes of types that live below the
//! API (`model`, `dispatch`), which must not know about OpenAPI; a wire
//! field holding one points here with `#[schema(value_type = ...)]`.
//! `schema_only_shapes_list_every_field_of_their_real_types` (in
//! `tests/tests/all/api.rs`) builds each real type with every field set and
//! fails when a shape here does not list one. Then [`WireRules`]: what the
//! derives cannot say (patterns, ranges, closed bodies).
//! Times are microseconds since the Unix epoch; ids are UUIDs.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

/// A component's bytes, as uploaded.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct WasmBytes(Vec<u8>);

/// A report, table or link a run left; with a key, one version of it.
#[derive(ToSchema)]
pub struct Artifact {
    pub id: String,
    pub key: Option<String>,
    pub version: u64,
    /// markdown, table or link
    pub kind: String,
    pub description: Option<String>,
    /// Markdown text, a URL, or (table) an array of rows.
    pub data: Value,
    pub flow_run: String,
    pub task_run: Option<String>,
    pub created_at: String,
}

/// A task policy or override; every field optional.
#[derive(ToSchema)]
pub struct TaskPolicy {
    pub retries: Option<u32>,
    pub retry_delay_ms: Option<Vec<u64>>,
    pub backoff: Option<f64>,
    pub max_delay_ms: Option<u64>,
    pub jitter: Option<f64>,
    /// failed, timeout, out-of-fuel, memory, trap.
    pub retry_on: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub cache_ttl_ms: Option<u64>,
    /// input-and-code, input or none.
    pub cache_key: Option<String>,
    /// The key's parts, used instead of `cache_key`: input, params, run-id, code.
    pub cache_key_parts: Option<Vec<String>>,
    pub refresh_cache: Option<bool>,
    pub tags: Option<Vec<String>>,
    /// State hooks: tasks of the same component run when a run ends
    /// Completed, Failed, Cancelled or Crashed. Only the code's own policy
    /// names them; a deployment's or an override's are not used.
    pub on_completion: Option<Vec<String>>,
    pub on_failure: Option<Vec<String>>,
    pub on_cancellation: Option<Vec<String>>,
    pub on_crashed: Option<Vec<String>>,
    /// `false` keeps the result out of the records (a resume runs it again).
    pub persist_result: Option<bool>,
    /// A storage the host names (`--result-storage NAME=DIR`) that keeps the result in a file.
    pub result_storage: Option<String>,
}

#[derive(ToSchema)]
pub struct Schedule {
    /// Five fields (minute hour day-of-month month day-of-week), six with
    /// seconds first, or a macro (`@daily`); read in `timezone`.
    pub cron: Option<String>,
    pub interval_seconds: Option<u64>,
    /// An RFC 5545 recurrence rule, e.g. `FREQ=WEEKLY;BYDAY=MO;BYHOUR=9`.
    pub rrule: Option<String>,
    /// RFC 3339 with an offset: an interval's grid passes through it; an
    /// rrule starts there.
    pub anchor: Option<String>,
    /// IANA time zone of the cron or rrule (default UTC), e.g. `Europe/Berlin`.
    pub timezone: Option<String>,
    /// Laid over the deployment's params for this schedule's runs.
    #[schema(nullable = false)]
    pub params: Option<std::collections::BTreeMap<String, Value>>,
    #[schema(nullable = false)]
    pub active: Option<bool>,
}

#[derive(ToSchema)]
pub struct Deployment {
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")]
    pub name: String,
    /// sha256 of an uploaded component.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub component: String,
    pub flow: String,
    #[schema(nullable = false)]
    pub description: Option<String>,
    /// Default parameters; a run's own are laid over them.
    #[schema(nullable = false)]
    pub params: Option<std::collections::BTreeMap<String, Value>>,
    /// Default `wasm`, served by the server's embedded executor.
    #[schema(nullable = false)]
    pub work_pool: Option<String>,
    #[schema(nullable = false)]
    pub work_queue: Option<String>,
    #[schema(nullable = false)]
    pub schedules: Option<Vec<Schedule>>,
    /// Laid over every task's own policy.
    #[schema(nullable = false)]
    pub task_policy: Option<TaskPolicy>,
    #[schema(nullable = false)]
    pub tags: Option<Vec<String>>,
    /// Secrets its runs may read.
    #[schema(nullable = false)]
    pub secrets: Option<Vec<String>>,
    #[schema(nullable = false)]
    pub paused: Option<bool>,
    pub concurrency_limit: Option<u32>,
    /// Fire times missed while no server ran: `skip` (default), `latest` or `all`.
    #[schema(nullable = false, pattern = "^(skip|latest|all)$")]
    pub catchup: Option<String>,
    /// With `catchup: all`, at most this many (the latest); default 10.
    #[schema(nullable = false)]
    pub catchup_limit: Option<u32>,
    /// What its runs may reach; only hosts that allow all of it take them.
    #[schema(nullable = false)]
    pub capabilities: Option<Capabilities>,
    /// Set by the server: the saved version this definition is (ignored when sent).
    pub version: Option<u32>,
}

/// What a deployment's runs need, or what a host allows. Nothing by default.
#[derive(ToSchema)]
pub struct Capabilities {
    /// Directories, seen by the guest at the same absolute path.
    #[schema(nullable = false)]
    pub dirs: Option<Vec<DirGrant>>,
    /// Environment variable names (their values are the host's own).
    #[schema(nullable = false)]
    pub env: Option<Vec<String>>,
    /// Hosts wasi:http requests may go to: `name` (the scheme's own port,
    /// 80 or 443), `name:port`, an IPv4 address or `[IPv6]`, each with an
    /// optional port; compared as written, never resolved. Everything else
    /// is refused with `HTTP-request-denied`.
    #[schema(nullable = false)]
    pub http: Option<Vec<String>>,
}

#[derive(ToSchema)]
pub struct DirGrant {
    /// Absolute, without `.` or `..`.
    pub path: String,
    #[schema(nullable = false)]
    pub writable: Option<bool>,
}

/// One saved definition of a deployment.
#[derive(ToSchema)]
pub struct DeploymentVersion {
    pub version: u32,
    pub deployment: Deployment,
    /// The API key's role and sha256 prefix that saved it.
    pub created_by: String,
    pub created_at: i64,
    /// Why, when not a plain deploy: `rollback to version N`.
    pub note: Option<String>,
}

#[derive(ToSchema)]
pub struct WorkPool {
    pub name: String,
    pub description: Option<String>,
    pub paused: Option<bool>,
    pub concurrency_limit: Option<u32>,
}

#[derive(ToSchema)]
pub struct WorkQueue {
    pub name: String,
    pub work_pool: Option<String>,
    /// Lower runs first.
    pub priority: Option<u32>,
    pub concurrency_limit: Option<u32>,
    pub paused: Option<bool>,
    /// Runs of the pool whose tags include all of these belong here too
    /// (for hosts started with `--queue`).
    pub tags: Option<Vec<String>>,
}

#[derive(ToSchema)]
pub struct Variable {
    pub name: String,
    pub value: Value,
}

/// `PUT /api/work-pools/{name}`'s body: the path names the pool.
#[derive(ToSchema)]
pub struct WorkPoolUpdate {
    /// Ignored: the path names the pool.
    #[schema(nullable = false)]
    pub name: Option<String>,
    #[schema(nullable = false)]
    pub description: Option<String>,
    #[schema(nullable = false)]
    pub paused: Option<bool>,
    pub concurrency_limit: Option<u32>,
}

#[derive(ToSchema)]
pub struct HostClaimRequest {
    /// The lease holder: unique per host process ("name pid=N boot=B").
    pub holder: String,
    #[schema(min_items = 1)]
    pub pools: Vec<String>,
    /// Only runs of these queues; empty or absent takes every queue.
    #[schema(nullable = false)]
    pub queues: Option<Vec<String>>,
    /// How long to wait for work before answering 204 (at most 25 s).
    #[schema(nullable = false)]
    pub wait_ms: Option<u64>,
    /// What the host lets runs reach; it is handed only runs that need no more.
    #[schema(nullable = false)]
    pub allows: Option<Capabilities>,
    /// `/api/hosts/claims` only: at most this many runs (absent is 1).
    #[schema(nullable = false, minimum = 1, maximum = 64)]
    pub max_runs: Option<u32>,
}

/// Runs handed to a remote host in one claim, each leased to it.
#[derive(ToSchema)]
pub struct HostClaims {
    pub claims: Vec<HostClaim>,
}

/// A run handed to a remote host, leased to it at `epoch`.
#[derive(ToSchema)]
pub struct HostClaim {
    pub run: String,
    pub epoch: u64,
    /// sha256 of the component; fetch it from /api/components/{digest}/wasm and check it.
    pub component: String,
    pub flow: String,
    pub params: String,
    pub attempt: u32,
    pub deployment: Option<String>,
    pub task_override: TaskPolicy,
    /// (name, value) of each secret bound to the run.
    pub secrets: Vec<Vec<String>>,
    /// Task runs earlier attempts completed, replayed instead of run again.
    pub replay: Vec<Value>,
    /// What its instances may reach (its deployment's needs).
    pub capabilities: Option<Capabilities>,
    pub lease_ttl_ms: u64,
}

#[derive(ToSchema)]
pub struct HostHeartbeat {
    pub holder: String,
    pub name: String,
    pub version: String,
    pub pools: Vec<String>,
    #[schema(nullable = false)]
    pub queues: Option<Vec<String>>,
    pub slots: u32,
    /// [run id, epoch] of each run the host holds.
    pub runs: Vec<Vec<Value>>,
    #[schema(nullable = false)]
    pub allows: Option<Capabilities>,
}

#[derive(ToSchema)]
pub struct HostHeartbeatReply {
    /// Runs the host lost: stop them and report nothing more.
    pub lost: Vec<String>,
    /// Runs someone asked to cancel.
    pub cancel: Vec<String>,
    pub lease_ttl_ms: u64,
}

/// What a host recorded for a run since its last report.
#[derive(ToSchema)]
pub struct HostReport {
    pub holder: String,
    pub epoch: u64,
    /// The run first, then its subflows.
    pub flow_runs: Vec<super::wire::FlowRun>,
    pub task_runs: Option<Vec<Value>>,
    pub logs: Option<Vec<Value>>,
}

#[derive(ToSchema)]
pub struct Host {
    pub name: String,
    pub holder: String,
    pub version: String,
    pub pools: Vec<String>,
    pub queues: Vec<String>,
    pub slots: u32,
    pub runs_in_hand: u64,
    pub last_heartbeat: i64,
    /// What it lets runs reach.
    pub allows: Capabilities,
    /// Heard from within two lease periods.
    pub online: bool,
}

#[derive(ToSchema)]
pub struct Automation {
    pub name: String,
    /// failed, crashed, late, cancelled, completed or stuck.
    pub on: String,
    pub deployment: Option<String>,
    pub tag: Option<String>,
    pub flow: Option<String>,
    /// With `on: stuck`: Running longer than this counts as stuck.
    pub stuck_after_seconds: Option<u64>,
    /// An http:// URL the event is POSTed to.
    pub webhook: String,
    /// Sent with each delivery; values are never shown back (`***`).
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// A JSON body with {{automation}}, {{event}}, {{flow_run_id}}, {{flow}},
    /// {{deployment}}, {{state}}, {{reason}} and {{link}}.
    pub template: Option<String>,
    pub paused: Option<bool>,
}

/// An ask for slots of server-wide limits (`dispatch::limits::TakeSlots`).
#[derive(ToSchema)]
pub struct TakeSlotsRequest {
    /// The top-level flow run the slots are held for: they count while it
    /// is unfinished and its lease is live.
    #[schema(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub flow_run: String,
    /// Limit names; slots of each are taken, all or none.
    #[schema(min_items = 1, max_items = 64)]
    pub names: Vec<String>,
    #[schema(minimum = 1, maximum = 1000000)]
    pub slots: u32,
    /// True: a name with no limit is a 404. False (task tags): it is not limited.
    #[schema(nullable = false)]
    pub strict: Option<bool>,
}

/// How an ask for slots went (`dispatch::limits::Taken`): `{"outcome":
/// "taken", "lease": ID}`, `{"outcome": "unlimited"}` or `{"outcome":
/// "full", "limit": NAME, "retry_after_ms": N or null}`.
#[derive(ToSchema)]
pub struct SlotOutcome {
    /// `taken`, `unlimited` or `full`.
    pub outcome: String,
    /// With `taken`: give it back with `/api/concurrency-slots/release`.
    pub lease: Option<String>,
    /// With `full`: the limit with too few free slots.
    pub limit: Option<String>,
    /// With `full`, for a rate limit: when enough slots are back.
    pub retry_after_ms: Option<u64>,
}

/// A name of a pool, queue, deployment, secret, variable, limit or
/// automation (`model::deploy::validate_name`).
const NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$";
/// A page cursor (`store::RunCursor`): creation micros, a dot, the run's id.
const CURSOR_PATTERN: &str =
    "^-?[0-9]{1,18}\\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// A time as `since`/`until` read it: epoch micros, or RFC 3339 in UTC
/// (days to 28 keep every match a real date).
const TIME_PATTERN: &str = "^(-?[0-9]{1,18}|(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?Z?)$";
/// A component's sha256, as the server names it.
const DIGEST_PATTERN: &str = "^[0-9a-f]{64}$";

/// Schema-only request bodies whose real type (in `model` or `dispatch`)
/// is read with `deny_unknown_fields`: the document says so, or a client is
/// told a field is fine that the server refuses. (The `api` types that deny
/// unknown fields say so themselves: the derive reads their serde attribute.)
/// `WorkPoolUpdate` is read as a `model::WorkPool`, which denies them too.
const CLOSED_BODIES: &[&str] = &[
    "Automation",
    "Deployment",
    "Schedule",
    "TakeSlotsRequest",
    "WorkPool",
    "WorkPoolUpdate",
    "WorkQueue",
];

/// What the derives cannot say about the parameters and bodies the server
/// reads: the patterns it checks names and digests against, the ranges its
/// numbers parse into, the states it knows, and which bodies are closed.
/// Schemathesis (`tests/schemathesis.toml`) holds the document to these.
pub(super) struct WireRules;

impl utoipa::Modify for WireRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{AdditionalProperties, Object, Schema, SchemaFormat};
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let Some(RefOr::T(Schema::Object(object))) = parameter.schema.as_mut() else {
                        continue;
                    };
                    let object: &mut Object = object;
                    match (&parameter.parameter_in, parameter.name.as_str()) {
                        (ParameterIn::Path, "digest") => {
                            object.pattern = Some(DIGEST_PATTERN.into());
                        }
                        (ParameterIn::Path, "id") => {
                            object.format = Some(SchemaFormat::Custom("uuid".into()));
                        }
                        (ParameterIn::Path, "name" | "pool") => {
                            object.pattern = Some(NAME_PATTERN.into());
                        }
                        // Parsed as usize; the handlers clamp them to their caps.
                        (ParameterIn::Query, "limit" | "offset") => {
                            object.minimum = Some(utoipa::Number::UInt(0));
                            object.maximum = Some(utoipa::Number::UInt(u64::MAX as usize));
                        }
                        (ParameterIn::Query, "after") => {
                            object.minimum = Some(utoipa::Number::Int(i64::MIN as isize));
                            object.maximum = Some(utoipa::Number::Int(i64::MAX as isize));
                        }
                        // `next_cursor` as the server writes it: micros.uuid.
                        (ParameterIn::Query, "cursor") => {
                            object.pattern = Some(CURSOR_PATTERN.into());
                        }
                        (ParameterIn::Query, "since" | "until") => {
                            object.pattern = Some(TIME_PATTERN.into());
                        }
                        (ParameterIn::Query, "state") => {
                            object.enum_values = Some(
                                crate::model::RunState::ALL
                                    .iter()
                                    .map(|s| serde_json::Value::String(s.to_string()))
                                    .collect(),
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for schema in components.schemas.values_mut() {
            widen_unsigned(schema);
        }
        for name in CLOSED_BODIES {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name) {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

/// utoipa writes a `u32` as `int32` from 0, which caps it at 2^31 - 1 for
/// a reader of the document (and a `u64` as `int64`, at 2^63 - 1); the
/// server takes up to 2^32 - 1 (2^64 - 1), so say so.
fn widen_unsigned(schema: &mut utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ArrayItems, KnownFormat, Schema, SchemaFormat};
    let RefOr::T(schema) = schema else { return };
    match schema {
        Schema::Object(object) => {
            let unsigned = match object.minimum {
                Some(utoipa::Number::UInt(n)) => n == 0,
                Some(utoipa::Number::Int(n)) => n == 0,
                Some(utoipa::Number::Float(n)) => n == 0.0,
                None => false,
            };
            let format = object.format.clone();
            if unsigned && format == Some(SchemaFormat::KnownFormat(KnownFormat::Int32)) {
                object.format = Some(SchemaFormat::KnownFormat(KnownFormat::Int64));
                object.maximum = Some(utoipa::Number::UInt(u32::MAX as usize));
            }
            // A `u64` likewise goes past int64's 2^63 - 1.
            if unsigned
                && format == Some(SchemaFormat::KnownFormat(KnownFormat::Int64))
                && object.maximum.is_none()
            {
                object.maximum = Some(utoipa::Number::UInt(u64::MAX as usize));
            }
            for property in object.properties.values_mut() {
                widen_unsigned(property);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                widen_unsigned(items);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(widen_unsigned),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(widen_unsigned),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(widen_unsigned),
        _ => {}
    }
}
