//! `host secret set|ls|rm`: secrets are written and listed by name; no
//! command reads a value back.

use super::backend::Backend;
use super::output::{print_json, said, table, when};
use super::{Exit, JsonFlag, NameArgs};
use crate::api::wire::{SecretList, SecretValue};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret; the value is read from --value, or else from standard input.
    #[command(after_help = "Examples:
  printf %s \"$PASSWORD\" | host secret set warehouse-password
  host secret set api-token --value abc123")]
    Set(SecretSetArgs),
    /// List secret names (values are never shown).
    Ls(JsonFlag),
    /// Delete a secret.
    Rm(NameArgs),
}

#[derive(Args, Debug)]
pub struct SecretSetArgs {
    name: String,
    /// The value (visible in your shell history; prefer standard input).
    #[arg(long)]
    value: Option<String>,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn secret(command: SecretCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        SecretCommand::Set(args) => {
            let value = match args.value {
                Some(v) => v,
                None => {
                    use std::io::{IsTerminal, Read};
                    if std::io::stdin().is_terminal() {
                        eprintln!("Value for secret '{}' (end with Ctrl-D):", args.name);
                    }
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            if value.is_empty() {
                return Err(Exit::bad_input("the secret's value is empty"));
            }
            let reply = backend.send(
                "PUT",
                &format!("/api/secrets/{}", args.name),
                &SecretValue { value },
            )?;
            said(&reply, args.format.json, || {
                format!("Secret '{}' set on {}.", args.name, backend.describe())
            });
        }
        SecretCommand::Ls(format) => {
            let list: SecretList = backend.get_as("/api/secrets")?;
            if format.json {
                print_json(&list.secrets)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .secrets
                    .iter()
                    .map(|s| vec![s.name.clone(), when(s.updated_at)])
                    .collect();
                println!("{}", table(&["NAME", "UPDATED (UTC)"], &rows));
            }
        }
        SecretCommand::Rm(args) => {
            let reply = backend.delete(&format!("/api/secrets/{}", args.name))?;
            said(&reply, args.format.json, || {
                format!("Secret '{}' deleted.", args.name)
            });
        }
    }
    Ok(())
}
