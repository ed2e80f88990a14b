//! The smallest flow: two tasks, one after the other.

use weir_sdk::{Result, flow, info, task};

/// Makes a greeting.
#[task]
fn greet(name: String) -> String {
    format!("Hello, {name}!")
}

/// Shouts it.
#[task(retries = 1)]
fn shout(text: String) -> String {
    text.to_uppercase()
}

/// Greets someone (the world, by default) and shouts it.
#[flow]
fn hello(name: Option<String>) -> Result<String> {
    let name = name.unwrap_or_else(|| "world".into());
    info!("greeting {name}");
    let greeting = greet(name)?;
    Ok(shout(greeting)?)
}

weir_sdk::export!(flows: [hello], tasks: [greet, shout]);
