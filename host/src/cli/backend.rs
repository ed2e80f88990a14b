//! Where server state lives for a CLI command: the API server named by
//! `api.url` (profile or `WEIR_API_URL`), or, when none is set, the same API
//! router run in-process over the local `$WEIR_HOME` database.

use super::{Exit, paths};
use crate::api::InProcess;
use crate::api::wire::{FlowRun, FlowRunDetail, LogLine, LogList};
use crate::client::Client;
use crate::config::{Paths, Profiles, Settings};
use crate::server::{Server, ServerConfig};
use anyhow::Context;
use serde_json::Value;
use std::time::Duration;

pub(crate) enum Backend {
    Remote(Client),
    Local {
        api: InProcess,
        /// The store, executor and runtimes the in-process API uses.
        server: Box<Server>,
    },
}

/// Reads `$WEIR_HOME/profiles.toml` (if any).
pub(crate) fn load_profiles(paths: &Paths) -> anyhow::Result<Profiles> {
    let file = paths.profiles();
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            Profiles::parse(&text).map_err(|e| Exit::bad_input(format!("{}: {e}", file.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
    }
}

/// The settings in effect: environment over the active profile over defaults.
pub(crate) fn settings() -> anyhow::Result<Settings> {
    let profiles = load_profiles(&paths())?;
    Ok(profiles.resolve(&|var| std::env::var(var).ok()))
}

impl Backend {
    pub fn open() -> anyhow::Result<Backend> {
        let settings = settings()?;
        if let Some(url) = settings.get("api.url") {
            let source = settings
                .source("api.url")
                .map(|s| s.to_string())
                .unwrap_or_default();
            let mut client = Client::new(url, settings.get("api.key").map(str::to_string), source)
                .map_err(|e| Exit::bad_input(e.to_string()))?;
            if let Some(ca_file) = settings.get("api.ca_file") {
                client = client
                    .with_ca_file(std::path::Path::new(ca_file))
                    .map_err(|e| Exit::bad_input(e.to_string()))?;
            }
            return Ok(Backend::Remote(client));
        }
        Self::open_local(&paths())
    }

    fn open_local(paths: &Paths) -> anyhow::Result<Backend> {
        let mut config = ServerConfig::new(paths.clone());
        // Runs waiting for a server stay for it: this process takes only its own.
        config.take_waiting = false;
        config.store = super::local::store_options(paths)?;
        let server = Server::open(config)?;
        for run in &server.interrupted {
            super::local::note_interrupted(run);
        }
        Ok(Backend::Local {
            api: server.in_process(),
            server: Box::new(server),
        })
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Backend::Remote(_))
    }

    /// "http://HOST:PORT" or "the local database".
    pub fn describe(&self) -> String {
        match self {
            Backend::Remote(client) => client.base().to_string(),
            Backend::Local { .. } => format!("the local database in {}", paths().home().display()),
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None, "application/json")
    }

    /// GETs `path` and reads the reply as the API's type for it
    /// (`crate::api::wire`): a field the server no longer sends fails here,
    /// with the path named, instead of printing blank.
    pub fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Self::parse(path, self.get(path)?)
    }

    /// Sends `body` and reads the reply as `T` (see [`Backend::get_as`]).
    pub fn send_as<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &(impl serde::Serialize + ?Sized),
    ) -> anyhow::Result<T> {
        Self::parse(path, self.send(method, path, body)?)
    }

    /// Reads a reply to `path` already in hand as `T` (a `--json` command
    /// prints the reply as the server sent it, and reads it too).
    pub fn parse<T: serde::de::DeserializeOwned>(path: &str, reply: Value) -> anyhow::Result<T> {
        serde_json::from_value(reply).with_context(|| {
            format!("reading the server's reply to {path}; is the server another version than this host?")
        })
    }

    /// Sends a request body: the type the handler reads (`api::wire`, or the
    /// `model` type it takes whole), never JSON built by hand, so a field the
    /// server renames fails to compile here.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: &(impl serde::Serialize + ?Sized),
    ) -> anyhow::Result<Value> {
        self.call(
            method,
            path,
            Some(serde_json::to_vec(body)?),
            "application/json",
        )
    }

    /// POSTs an action its path names whole (pause, resume, cancel): no body.
    pub fn act(&self, path: &str) -> anyhow::Result<Value> {
        self.call("POST", path, None, "application/json")
    }

    /// [`Backend::act`], reading the reply as `T`.
    pub fn act_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Self::parse(path, self.act(path)?)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call("DELETE", path, None, "application/json")
    }

    pub fn upload(&self, bytes: Vec<u8>) -> anyhow::Result<Value> {
        self.call("POST", "/api/components", Some(bytes), "application/wasm")
    }

    /// Non-2xx answers become errors that carry the API's message; a 4xx
    /// exits with 2 (bad input), anything else with 1.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> anyhow::Result<Value> {
        let (status, bytes) = match self {
            Backend::Remote(client) => client
                .request(method, path, body, content_type)
                .map_err(|e| Exit::bad_input(e.to_string()))?,
            Backend::Local { api, server } => {
                server.block_on(api.call(method, path, body, content_type))
            }
        };
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if (200..300).contains(&status) {
            return Ok(value);
        }
        // The API's refusals say what to do; anything else (a proxy's page)
        // is shown as it came.
        let message = serde_json::from_value::<crate::api::ErrorReply>(value.clone())
            .map(|refusal| refusal.message)
            .unwrap_or_else(|_| format!("HTTP {status}: {value}"));
        Err(Exit {
            code: if (400..500).contains(&status) { 2 } else { 1 },
            message,
        }
        .into())
    }

    /// Prints a run's log as it grows and returns its final state (as JSON)
    /// once it has ended. Used by `deployment run --watch` and `flow-run logs -f`.
    pub fn follow(
        &self,
        id: &str,
        json: bool,
        mut print: impl FnMut(&LogLine),
    ) -> anyhow::Result<FlowRun> {
        let mut after = 0i64;
        let mut drained_after_end = 0;
        loop {
            let page: LogList = self.get_as(&format!(
                "/api/flow-runs/{id}/logs?after={after}&limit=1000"
            ))?;
            let lines = page.logs;
            for line in &lines {
                after = line.id;
                if json {
                    println!("{}", serde_json::to_string(line)?);
                } else {
                    print(line);
                }
            }
            let run: FlowRunDetail = self.get_as(&format!("/api/flow-runs/{id}"))?;
            let state = run.flow_run.state;
            // A run paused for input waits for a person: following it ends here.
            let stopped = state.is_terminal() || state == crate::model::RunState::Paused;
            if stopped && lines.is_empty() {
                drained_after_end += 1;
                if drained_after_end >= 2 {
                    return Ok(run.flow_run);
                }
            }
            if lines.len() < 1000 {
                std::thread::sleep(Duration::from_millis(150));
            }
        }
    }
}
