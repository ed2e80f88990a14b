//! `host db`: the database the runs are kept in (SQLite in `$WEIR_HOME`, or
//! PostgreSQL with `--database` / the `server.database` setting).

use super::JsonFlag;
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
        DbCommand::Check(args) => super::local::db_report(args.database, false, args.json.json),
        DbCommand::Migrate(args) => super::local::db_report(args.database, true, args.json.json),
    }
}
