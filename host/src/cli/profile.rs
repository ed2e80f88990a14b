//! `host profile ...` and `host config ...`: named settings in
//! `$WEIR_HOME/profiles.toml`, overridden by environment variables.

use super::backend::load_profiles;
use super::output::table;
use super::{Exit, JsonFlag, paths};
use crate::config::{DEFAULT_PROFILE, Profiles, SETTINGS, Source, setting};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Create an empty profile.
    Create(ProfileName),
    /// Make a profile the active one (WEIR_PROFILE still wins).
    Use(ProfileName),
    /// List profiles; the active one is marked.
    Ls(JsonFlag),
    /// Delete a profile.
    Rm(ProfileName),
}

#[derive(Args, Debug)]
pub struct ProfileName {
    name: String,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Set a setting in the active profile, e.g. `host config set api.url http://127.0.0.1:4200`.
    Set(SetArgs),
    /// Show the settings in effect.
    View(ViewArgs),
    /// Remove a setting from the active profile.
    Unset(UnsetArgs),
}

#[derive(Args, Debug)]
#[command(
    after_help = "Settings: api.url, api.key, logging.level, server.addr, server.api_key_file, server.database, store.durability"
)]
pub struct SetArgs {
    key: String,
    value: String,
}

#[derive(Args, Debug)]
pub struct UnsetArgs {
    key: String,
}

#[derive(Args, Debug)]
pub struct ViewArgs {
    /// Say where each value comes from (env, profile or default).
    #[arg(long)]
    show_sources: bool,
    /// Show secrets (api.key) in clear.
    #[arg(long)]
    show_secrets: bool,
    #[command(flatten)]
    format: JsonFlag,
}

/// Writes profiles.toml atomically, readable by the owner only (it may hold an API key).
fn save(profiles: &Profiles) -> anyhow::Result<()> {
    let file = paths().profiles();
    if let Some(dir) = file.parent() {
        crate::store::create_private_dir(dir)?;
    }
    let tmp = file.with_extension("toml.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    {
        use std::io::Write;
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(profiles.to_toml().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

fn active(profiles: &Profiles) -> String {
    profiles.active_name(std::env::var("WEIR_PROFILE").ok().as_deref())
}

pub fn profile(command: ProfileCommand) -> anyhow::Result<()> {
    let mut profiles = load_profiles(&paths())?;
    match command {
        ProfileCommand::Create(p) => {
            crate::model::deploy::validate_name("profile", &p.name)
                .map_err(|e| Exit::bad_input(e.to_string()))?;
            if profiles.profiles.contains_key(&p.name) {
                return Err(Exit::bad_input(format!("profile '{}' exists", p.name)));
            }
            profiles.profiles.insert(p.name.clone(), Default::default());
            save(&profiles)?;
            println!(
                "Created profile '{}'. Switch to it with: host profile use {}",
                p.name, p.name
            );
        }
        ProfileCommand::Use(p) => {
            if !profiles.profiles.contains_key(&p.name) && p.name != DEFAULT_PROFILE {
                return Err(Exit::bad_input(format!(
                    "no profile '{}'; create it with `host profile create {}`",
                    p.name, p.name
                )));
            }
            profiles.active = Some(p.name.clone());
            save(&profiles)?;
            println!("Active profile: {}", p.name);
        }
        ProfileCommand::Ls(format) => {
            let current = active(&profiles);
            let mut names: Vec<String> = profiles.profiles.keys().cloned().collect();
            if !names.contains(&DEFAULT_PROFILE.to_string()) {
                names.insert(0, DEFAULT_PROFILE.to_string());
            }
            if format.json {
                println!("{}", json!({ "active": current, "profiles": names }));
            } else {
                for name in names {
                    let mark = if name == current { "*" } else { " " };
                    println!("{mark} {name}");
                }
            }
        }
        ProfileCommand::Rm(p) => {
            if profiles.profiles.remove(&p.name).is_none() {
                return Err(Exit::bad_input(format!("no profile '{}'", p.name)));
            }
            if profiles.active.as_deref() == Some(p.name.as_str()) {
                profiles.active = None;
            }
            save(&profiles)?;
            println!("Deleted profile '{}'.", p.name);
        }
    }
    Ok(())
}

pub fn config(command: ConfigCommand) -> anyhow::Result<()> {
    let mut profiles = load_profiles(&paths())?;
    let name = active(&profiles);
    match command {
        ConfigCommand::Set(args) => {
            let s = setting(&args.key).map_err(|e| Exit::bad_input(e.to_string()))?;
            if s.key == "api.url" {
                crate::client::Client::new(&args.value, None, "")
                    .map_err(|e| Exit::bad_input(e.to_string()))?;
            }
            profiles
                .profiles
                .entry(name.clone())
                .or_default()
                .insert(s.key.to_string(), args.value);
            save(&profiles)?;
            println!("Set {} in profile '{name}'.", s.key);
            if let Ok(v) = std::env::var(s.env)
                && !v.is_empty()
            {
                println!(
                    "Note: {} is set in the environment and overrides it.",
                    s.env
                );
            }
        }
        ConfigCommand::Unset(args) => {
            let s = setting(&args.key).map_err(|e| Exit::bad_input(e.to_string()))?;
            let removed = profiles
                .profiles
                .get_mut(&name)
                .and_then(|p| p.remove(s.key))
                .is_some();
            if !removed {
                return Err(Exit::bad_input(format!(
                    "{} is not set in profile '{name}'",
                    s.key
                )));
            }
            save(&profiles)?;
            println!("Unset {} in profile '{name}'.", s.key);
        }
        ConfigCommand::View(args) => {
            let settings = profiles.resolve(&|var| std::env::var(var).ok());
            let shown = |key: &str, value: &str| {
                if key == "api.key" && !args.show_secrets {
                    "********".to_string()
                } else {
                    value.to_string()
                }
            };
            if args.format.json {
                let mut values = serde_json::Map::new();
                for (key, (value, source)) in &settings.values {
                    values.insert(
                        key.to_string(),
                        json!({ "value": shown(key, value), "source": source.to_string() }),
                    );
                }
                println!(
                    "{}",
                    json!({ "profile": settings.profile, "settings": values })
                );
                return Ok(());
            }
            println!("profile: {}", settings.profile);
            let rows: Vec<Vec<String>> = SETTINGS
                .iter()
                .filter_map(|s| {
                    let (value, source) = settings.values.get(s.key)?;
                    let mut row = vec![s.key.to_string(), shown(s.key, value)];
                    if args.show_sources {
                        row.push(match source {
                            Source::Default => "default".into(),
                            other => other.to_string(),
                        });
                    }
                    Some(row)
                })
                .collect();
            let headers: &[&str] = if args.show_sources {
                &["SETTING", "VALUE", "SOURCE"]
            } else {
                &["SETTING", "VALUE"]
            };
            println!("{}", table(headers, &rows));
        }
    }
    Ok(())
}
