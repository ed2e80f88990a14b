//! `host variable set|get|ls|rm`: named JSON values, readable by flows and
//! by deployments' `{{ variables.NAME }}` params.

use super::backend::Backend;
use super::output::{print_json, said, table};
use super::{JsonFlag, NameArgs};
use crate::api::wire::{VariableList, VariableValue};
use crate::model::Variable;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum VariableCommand {
    /// Set a variable; VALUE is read as JSON when it parses, else as text.
    Set(VariableSetArgs),
    /// Print a variable's value (as JSON).
    Get(NameArgs),
    /// List variables.
    Ls(JsonFlag),
    /// Delete a variable.
    Rm(NameArgs),
}

#[derive(Args, Debug)]
pub struct VariableSetArgs {
    name: String,
    value: String,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn variable(command: VariableCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        VariableCommand::Set(args) => {
            let value: Value =
                serde_json::from_str(&args.value).unwrap_or(Value::String(args.value.clone()));
            let path = format!("/api/variables/{}", args.name);
            let reply = backend.send("PUT", &path, &VariableValue { value })?;
            let saved: Variable = Backend::parse(&path, reply.clone())?;
            said(&reply, args.format.json, || {
                format!("Variable '{}' = {}", args.name, saved.value)
            });
        }
        VariableCommand::Get(args) => {
            let path = format!("/api/variables/{}", args.name);
            let reply = backend.get(&path)?;
            let variable: Variable = Backend::parse(&path, reply.clone())?;
            said(&reply, args.format.json, || variable.value.to_string());
        }
        VariableCommand::Ls(format) => {
            let list: VariableList = backend.get_as("/api/variables")?;
            if format.json {
                print_json(&list.variables)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .variables
                    .iter()
                    .map(|v| vec![v.name.clone(), v.value.to_string()])
                    .collect();
                println!("{}", table(&["NAME", "VALUE"], &rows));
            }
        }
        VariableCommand::Rm(args) => {
            let reply = backend.delete(&format!("/api/variables/{}", args.name))?;
            said(&reply, args.format.json, || {
                format!("Variable '{}' deleted.", args.name)
            });
        }
    }
    Ok(())
}
