//! `host flow upload` and `host flow ls`: components sent to the server
//! (a guest project is built first) and the flows they hold.

use super::backend::Backend;
use super::output::{print_json, table};
use super::{Exit, JsonFlag};
use crate::api::wire::{FlowList, Uploaded};
use anyhow::Context;
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// A guest project folder (built first) or a .wasm component.
    path: PathBuf,
    #[command(flatten)]
    format: JsonFlag,
}

/// Builds `path` if it is a project and uploads the component; returns the reply.
pub(super) fn upload_path(backend: &Backend, path: &Path, progress: bool) -> anyhow::Result<Value> {
    let built = super::flow::build_component(path, progress)?;
    let bytes =
        std::fs::read(&built.wasm).with_context(|| format!("reading {}", built.wasm.display()))?;
    backend.upload(bytes).map_err(|e| {
        // Name the file in a refusal, as `flow run` does.
        match e.downcast::<Exit>() {
            Ok(exit) => Exit::bad_input(format!("{}: {}", path.display(), exit.message)),
            Err(e) => e,
        }
    })
}

pub fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    let reply = upload_path(&backend, &args.path, !args.format.json)?;
    if args.format.json {
        println!("{reply}");
    } else {
        let uploaded: Uploaded = Backend::parse("/api/components", reply)?;
        let flows = &uploaded.flows;
        println!(
            "{} sha256:{} to {} (flows: {})",
            if uploaded.created {
                "Uploaded"
            } else {
                "Already stored:"
            },
            uploaded.digest,
            backend.describe(),
            flows.join(", ")
        );
    }
    Ok(())
}

pub fn list_flows(format: JsonFlag) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    let list: FlowList = backend.get_as("/api/flows")?;
    if format.json {
        return print_json(&list.flows);
    }
    let rows: Vec<Vec<String>> = list
        .flows
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.component.chars().take(12).collect(),
                f.description.lines().next().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No flows uploaded yet. Upload one with: host flow upload examples/etl");
    } else {
        println!("{}", table(&["FLOW", "COMPONENT", "DESCRIPTION"], &rows));
    }
    Ok(())
}
