//! `host db`: the database the runs are kept in (SQLite in `$WEIR_HOME`, or
//! PostgreSQL with `--database` / the `server.database` setting).

use super::{JsonFlag, paths};
use crate::store::{Store, StoreTable};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Connect, and show where the data is, its schema version and row counts.
    /// Changes nothing; fails when the schema is behind this host (run
    /// `host db migrate`) or the database cannot be reached.
    Check(DbArgs),
    /// Apply the schema migrations this host knows (servers also do at start;
    /// several at once are safe).
    Migrate(DbArgs),
}

#[derive(Args, Debug)]
pub struct DbArgs {
    /// A PostgreSQL URL (postgres://user[:password]@host:port/db); default:
    /// the `server.database` setting (WEIR_DATABASE_URL), else $WEIR_HOME/weir.db.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    #[command(flatten)]
    json: JsonFlag,
}

pub fn run(command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Check(args) => report(&open(&args, false)?, args.json.json),
        DbCommand::Migrate(args) => report(&open(&args, true)?, args.json.json),
    }
}

fn open(args: &DbArgs, migrate: bool) -> anyhow::Result<Store> {
    let paths = paths();
    let mut options = super::flow::store_options(&paths)?;
    if let Some(url) = &args.database {
        options.database = Some(url.clone());
    }
    options.skip_migrations = !migrate;
    Ok(Store::open_with_options(&paths.database(), options)?)
}

fn report(store: &Store, json: bool) -> anyhow::Result<()> {
    let (current, newest) = store.schema_version()?;
    let current_schema = current == newest;
    let size = store.size_bytes()?;
    let rows = if current_schema {
        Some((
            store.count(StoreTable::FlowRuns)?,
            store.count(StoreTable::TaskRuns)?,
            store.count(StoreTable::Logs)?,
        ))
    } else {
        None
    };
    if json {
        let mut out = serde_json::json!({
            "database": store.location(),
            "schema_version": current,
            "newest_schema_version": newest,
            "size_bytes": size,
        });
        if let Some((flow_runs, task_runs, logs)) = rows {
            out["rows"] =
                serde_json::json!({"flow_runs": flow_runs, "task_runs": task_runs, "logs": logs});
        }
        println!("{out}");
    } else {
        println!("database        {}", store.location());
        println!("schema version  {current} (this host knows {newest})");
        println!("size            {:.1} MB", size as f64 / 1e6);
        if let Some((flow_runs, task_runs, logs)) = rows {
            println!("flow runs       {flow_runs}");
            println!("task runs       {task_runs}");
            println!("log lines       {logs}");
        }
    }
    if current > newest {
        anyhow::bail!(
            "the database is at schema version {current}, newer than this host ({newest}); use a newer host"
        );
    }
    if !current_schema {
        anyhow::bail!("the schema is at version {current} of {newest}: run `host db migrate`");
    }
    Ok(())
}
