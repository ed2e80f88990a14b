//! `#[flow]` and `#[task]`: turn plain Rust functions into Weir flows and tasks.
//!
//! For `#[task(...)] fn greet(name: String) -> Result<String>` this generates:
//! - a hidden argument struct (serde + JSON Schema) and the original body,
//!   renamed, which the `run-task` export calls;
//! - `fn greet(name) -> Result<String, TaskError>` that asks the host to run the
//!   task in its own sandbox (the `call-task` import);
//! - `mod greet { fn submit(..), fn map(..), fn __weir_entry() }` for fan-out
//!   and for `weir_sdk::export!`.
//!
//! Options are checked at compile time; mistakes get spanned errors that say
//! what is accepted.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, MetaNameValue, Pat, ReturnType, Token, Type};

/// Marks a function as a task: a unit of work run in its own sandbox.
///
/// Options: `name`, `retries`, `retry_delay`, `backoff`, `max_delay`, `jitter`,
/// `retry_on`, `timeout`, `fuel`, `memory`, `cache_ttl` (a duration, or
/// `"forever"`), `cache_key` (`"input-and-code"`, `"input"`, `"none"`, or the
/// parts of the key: some of `["input", "params", "run-id", "code"]`), `tags`,
/// and the state hooks `on_completion`, `on_failure`, `on_cancellation`,
/// `on_crashed`: a task (`on_failure = notify`) or a list of tasks
/// (`on_failure = [notify, page]`) of this component, each run in its own
/// sandbox with `run: weir_sdk::HookRun` (how the run ended) as its input;
/// `persist_result = false` keeps its result out of the database (a resume
/// then runs it again, and it is never cached).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Task, attr.into(), item.into())
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

/// Marks a function as a flow: it orchestrates tasks and subflows.
///
/// Takes the same options as `#[task]` (its retries and timeout apply to the
/// whole flow run).
#[proc_macro_attribute]
pub fn flow(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Flow, attr.into(), item.into())
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Flow,
    Task,
}

const OPTIONS: &[&str] = &[
    "name",
    "retries",
    "retry_delay",
    "backoff",
    "max_delay",
    "jitter",
    "retry_on",
    "timeout",
    "fuel",
    "memory",
    "cache_ttl",
    "cache_key",
    "refresh_cache",
    "tags",
    "on_completion",
    "on_failure",
    "on_cancellation",
    "on_crashed",
    "persist_result",
    "result_storage",
];

/// What `cache_key = [...]` may list (the host's `CacheKeyPart`).
const CACHE_KEY_PARTS: &[&str] = &["input", "params", "run-id", "code"];

const FAILURE_KINDS: &[&str] = &[
    "failed",
    "invalid-input",
    "timeout",
    "out-of-fuel",
    "memory",
    "trap",
    "invalid-output",
];

fn expand(kind: Kind, attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let mut function: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(e.span(), "#[flow] and #[task] go on a function, e.g. `fn load(rows: u32) -> weir_sdk::Result<u32>`")
    })?;
    let options = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let (name_override, policy) = policy_json(&options)?;
    // Each hook is named by its function, so a misspelt one fails to compile here.
    let hook_checks: Vec<TokenStream2> = options
        .iter()
        .filter(|o| {
            o.path
                .get_ident()
                .is_some_and(|i| i.to_string().starts_with("on_"))
        })
        .flat_map(|o| hook_paths(&o.value).unwrap_or_default())
        .map(|path| quote! { let _ = #path; })
        .collect();
    check_signature(&function)?;

    let ident = function.sig.ident.clone();
    let name = name_override.unwrap_or_else(|| ident.to_string());
    let vis = function.vis.clone();
    let description = doc_text(&function.attrs);
    let args_struct = format_ident!("__weir_args_{}", ident);
    let body_fn = format_ident!("__weir_body_{}", ident);

    // Arguments: names, types, and #[default(..)] values.
    let mut arg_names = Vec::new();
    let mut arg_types = Vec::new();
    let mut fields = Vec::new();
    let mut defaults = Vec::new();
    for input in function.sig.inputs.iter_mut() {
        let FnArg::Typed(pat_type) = input else {
            unreachable!("checked in check_signature")
        };
        let Pat::Ident(pat) = &*pat_type.pat else {
            unreachable!("checked in check_signature")
        };
        let arg = pat.ident.clone();
        let ty = (*pat_type.ty).clone();
        let mut serde_default = None;
        let mut kept = Vec::new();
        for attr in pat_type.attrs.drain(..) {
            if attr.path().is_ident("default") {
                let value: Expr = attr.parse_args()?;
                let default_fn = format_ident!("__weir_default_{}_{}", ident, arg);
                defaults.push(quote! {
                    #[doc(hidden)]
                    #[allow(non_snake_case)]
                    fn #default_fn() -> #ty { #value }
                });
                let path = default_fn.to_string();
                serde_default = Some(quote! { #[serde(default = #path)] });
            } else {
                kept.push(attr);
            }
        }
        pat_type.attrs = kept;
        fields.push(quote! { #serde_default #arg: #ty });
        arg_names.push(arg);
        arg_types.push(ty);
    }

    let (ok_type, returns_result) = ok_type(&function.sig.output);
    let inputs = &function.sig.inputs;
    let output = &function.sig.output;
    let body = &function.block;
    let attrs: Vec<_> = function
        .attrs
        .iter()
        .filter(|a| !a.path().is_ident("doc"))
        .collect();
    let docs: Vec<_> = function
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();

    let call_body = if returns_result {
        quote! { super::#body_fn(#(args.#arg_names),*) }
    } else {
        quote! { ::core::result::Result::<_, ::weir_sdk::Error>::Ok(super::#body_fn(#(args.#arg_names),*)) }
    };
    let item_vis = match &vis {
        syn::Visibility::Inherited => quote! { pub(super) },
        other => quote! { #other },
    };

    let (public_fn, extra) = match kind {
        Kind::Task => {
            let map_fn = match arg_types.len() {
                0 => quote! {},
                1 => {
                    let (a, t) = (&arg_names[0], &arg_types[0]);
                    quote! {
                        /// Submits one task per item; wait for them with `weir_sdk::wait_all`.
                        #item_vis fn map(items: impl ::core::iter::IntoIterator<Item = #t>) -> ::std::vec::Vec<::weir_sdk::TaskHandle<#ok_type>> {
                            items.into_iter().map(|#a| submit(#a)).collect()
                        }
                    }
                }
                _ => quote! {
                    /// Submits one task per tuple of arguments; wait for them with `weir_sdk::wait_all`.
                    #item_vis fn map(items: impl ::core::iter::IntoIterator<Item = (#(#arg_types),*)>) -> ::std::vec::Vec<::weir_sdk::TaskHandle<#ok_type>> {
                        items.into_iter().map(|(#(#arg_names),*)| submit(#(#arg_names),*)).collect()
                    }
                },
            };
            (
                quote! {
                    #(#docs)*
                    #[doc = "\n\nRuns as a task: in its own sandbox, with its policy, recorded by the host."]
                    #vis fn #ident(#(#arg_names: #arg_types),*) -> ::core::result::Result<#ok_type, ::weir_sdk::TaskError> {
                        ::weir_sdk::__private::call_task(#name, &#args_struct { #(#arg_names),* })
                    }
                },
                quote! {
                    /// Starts the task without waiting; `.wait()` on the handle for its result.
                    #item_vis fn submit(#(#arg_names: #arg_types),*) -> ::weir_sdk::TaskHandle<#ok_type> {
                        ::weir_sdk::__private::submit_task(#name, &super::#args_struct { #(#arg_names),* })
                    }
                    #map_fn
                },
            )
        }
        Kind::Flow => (
            quote! {
                #(#docs)*
                #[doc = "\n\nCalled from a flow, runs as a subflow: a child flow run of its own."]
                #vis fn #ident(#(#arg_names: #arg_types),*) -> ::core::result::Result<#ok_type, ::weir_sdk::TaskError> {
                    ::weir_sdk::__private::call_flow(#name, &#args_struct { #(#arg_names),* })
                }
            },
            quote! {},
        ),
    };

    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #[derive(::weir_sdk::__private::Serialize, ::weir_sdk::__private::Deserialize, ::weir_sdk::__private::JsonSchema)]
        #[serde(crate = "::weir_sdk::serde", deny_unknown_fields)]
        #[schemars(crate = "::weir_sdk::schemars")]
        struct #args_struct { #(#fields),* }

        #(#defaults)*

        #[doc(hidden)]
        #(#attrs)*
        fn #body_fn(#inputs) #output #body

        #public_fn

        #[doc(hidden)]
        #vis mod #ident {
            #[allow(unused_imports)]
            use super::*;

            #extra

            #[doc(hidden)]
            #item_vis fn __weir_entry() -> ::weir_sdk::__private::Entry {
                #(#hook_checks)*
                ::weir_sdk::__private::Entry {
                    name: #name,
                    description: #description,
                    policy: #policy,
                    schema: ::weir_sdk::__private::schema::<super::#args_struct>,
                    run: |input| {
                        let args: super::#args_struct = ::weir_sdk::__private::decode_args(input)?;
                        ::weir_sdk::__private::encode(#call_body)
                    },
                }
            }
        }
    })
}

fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new(
            token.span(),
            "flows and tasks are not async: write a plain `fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "flows and tasks cannot be generic: their inputs are JSON",
        ));
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "flows and tasks are free functions; remove `self`",
                ));
            }
            FnArg::Typed(t) => {
                if !matches!(&*t.pat, Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none()) {
                    return Err(syn::Error::new(
                        t.pat.span(),
                        "use a plain name for each argument, e.g. `rows: u32`",
                    ));
                }
                if matches!(&*t.ty, Type::Reference(_)) {
                    return Err(syn::Error::new(
                        t.ty.span(),
                        "arguments arrive as JSON, so take them by value (e.g. `String`, not `&str`)",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `Result<T>` / `Result<T, E>` → (T, true); any other `T` → (T, false); none → ((), false).
fn ok_type(output: &ReturnType) -> (TokenStream2, bool) {
    let ReturnType::Type(_, ty) = output else {
        return (quote! { () }, false);
    };
    if let Type::Path(path) = &**ty
        && let Some(last) = path.path.segments.last()
        && last.ident == "Result"
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(ok)) = args.args.first()
    {
        return (quote! { #ok }, true);
    }
    (quote! { #ty }, false)
}

fn doc_text(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    lines.join("\n").trim().to_string()
}

/// Checks the options and writes the policy as JSON text; returns the name override too.
fn policy_json(
    options: &Punctuated<MetaNameValue, Token![,]>,
) -> syn::Result<(Option<String>, String)> {
    let mut name = None;
    let mut fields: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for option in options {
        let key = option
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        if !OPTIONS.contains(&key.as_str()) {
            return Err(syn::Error::new(
                option.path.span(),
                format!(
                    "unknown option `{key}`; expected one of: {}",
                    OPTIONS.join(", ")
                ),
            ));
        }
        if seen.contains(&key) {
            return Err(syn::Error::new(
                option.path.span(),
                format!("`{key}` is given twice"),
            ));
        }
        seen.push(key.clone());
        let value = &option.value;
        let field = match key.as_str() {
            "name" => {
                name = Some(string(value)?);
                continue;
            }
            "retries" => format!("\"retries\":{}", integer(value)?),
            "retry_delay" => {
                let delays = match value {
                    Expr::Array(array) => array
                        .elems
                        .iter()
                        .map(duration_ms)
                        .collect::<syn::Result<Vec<_>>>()?,
                    other => vec![duration_ms(other)?],
                };
                let list: Vec<String> = delays.iter().map(u64::to_string).collect();
                format!("\"retry_delay_ms\":[{}]", list.join(","))
            }
            "backoff" => {
                let factor = float(value)?;
                if factor < 1.0 {
                    return Err(syn::Error::new(
                        value.span(),
                        "`backoff` is a factor of at least 1.0, e.g. 2.0",
                    ));
                }
                format!("\"backoff\":{factor}")
            }
            "jitter" => {
                let jitter = float(value)?;
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(syn::Error::new(
                        value.span(),
                        "`jitter` is a fraction from 0.0 to 1.0, e.g. 0.1",
                    ));
                }
                format!("\"jitter\":{jitter}")
            }
            "max_delay" => format!("\"max_delay_ms\":{}", duration_ms(value)?),
            "timeout" => format!("\"timeout_ms\":{}", duration_ms(value)?),
            // The host's CACHE_FOREVER_MS: a cached result that never expires.
            "cache_ttl" if string(value).is_ok_and(|s| s == "forever") => {
                format!("\"cache_ttl_ms\":{}", u64::MAX)
            }
            "cache_ttl" => format!("\"cache_ttl_ms\":{}", duration_ms(value)?),
            "fuel" => format!("\"fuel\":{}", integer(value)?),
            "memory" => format!("\"memory_bytes\":{}", memory_bytes(value)?),
            "cache_key" if matches!(value, Expr::Array(_)) => {
                let parts = strings(value)?;
                for (part, span) in &parts {
                    if !CACHE_KEY_PARTS.contains(&part.as_str()) {
                        return Err(syn::Error::new(
                            *span,
                            format!(
                                "unknown cache key part \"{part}\"; expected some of: {}",
                                CACHE_KEY_PARTS.join(", ")
                            ),
                        ));
                    }
                }
                let list: Vec<String> = parts.iter().map(|(p, _)| format!("\"{p}\"")).collect();
                format!("\"cache_key_parts\":[{}]", list.join(","))
            }
            "cache_key" => {
                let policy = string(value)?;
                if !["input-and-code", "input", "none"].contains(&policy.as_str()) {
                    return Err(syn::Error::new(
                        value.span(),
                        format!(
                            "unknown cache_key \"{policy}\"; expected \"input-and-code\", \"input\" or \"none\""
                        ),
                    ));
                }
                format!("\"cache_key\":\"{policy}\"")
            }
            "result_storage" => format!("\"result_storage\":{}", json_string(&string(value)?)),
            "persist_result" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => format!("\"persist_result\":{}", b.value),
                other => return Err(syn::Error::new(other.span(), "expected true or false")),
            },
            "refresh_cache" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => format!("\"refresh_cache\":{}", b.value),
                other => return Err(syn::Error::new(other.span(), "expected true or false")),
            },
            "retry_on" => {
                let kinds = strings(value)?;
                for (kind, span) in &kinds {
                    if !FAILURE_KINDS.contains(&kind.as_str()) {
                        return Err(syn::Error::new(
                            *span,
                            format!(
                                "unknown failure kind \"{kind}\"; expected some of: {}",
                                FAILURE_KINDS.join(", ")
                            ),
                        ));
                    }
                }
                let list: Vec<String> = kinds.iter().map(|(k, _)| format!("\"{k}\"")).collect();
                format!("\"retry_on\":[{}]", list.join(","))
            }
            "tags" => {
                let tags = strings(value)?;
                let list: Vec<String> = tags.iter().map(|(t, _)| json_string(t)).collect();
                format!("\"tags\":[{}]", list.join(","))
            }
            "on_completion" | "on_failure" | "on_cancellation" | "on_crashed" => {
                let list: Vec<String> = hook_paths(value)?
                    .iter()
                    .map(|path| {
                        let last = path.segments.last().map(|s| s.ident.to_string());
                        json_string(&last.unwrap_or_default())
                    })
                    .collect();
                format!("\"{key}\":[{}]", list.join(","))
            }
            _ => unreachable!("every option is handled"),
        };
        fields.push(field);
    }
    Ok((name, format!("{{{}}}", fields.join(","))))
}

/// A hook option's tasks: one function (`notify`) or a list (`[notify, page]`).
fn hook_paths(value: &Expr) -> syn::Result<Vec<syn::Path>> {
    let one = |e: &Expr| match e {
        Expr::Path(p) if p.qself.is_none() => Ok(p.path.clone()),
        other => Err(syn::Error::new(
            other.span(),
            "a hook is a task of this component, named by its function: `on_failure = notify` or `on_failure = [notify, page]`",
        )),
    };
    match value {
        Expr::Array(array) => array.elems.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn string(value: &Expr) -> syn::Result<String> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        other => Err(syn::Error::new(
            other.span(),
            "expected a string, e.g. \"5s\"",
        )),
    }
}

fn strings(value: &Expr) -> syn::Result<Vec<(String, Span)>> {
    match value {
        Expr::Array(array) => array
            .elems
            .iter()
            .map(|e| Ok((string(e)?, e.span())))
            .collect(),
        other => Err(syn::Error::new(
            other.span(),
            "expected a list of strings, e.g. [\"a\", \"b\"]",
        )),
    }
}

fn integer(value: &Expr) -> syn::Result<u64> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        other => Err(syn::Error::new(
            other.span(),
            "expected a whole number, e.g. 3",
        )),
    }
}

fn float(value: &Expr) -> syn::Result<f64> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<u64>().map(|n| n as f64),
        other => Err(syn::Error::new(other.span(), "expected a number, e.g. 2.0")),
    }
}

/// "250ms", "5s", "2m", "1h", "1d" → milliseconds.
fn duration_ms(value: &Expr) -> syn::Result<u64> {
    let text = string(value)?;
    let bad = || {
        syn::Error::new(
            value.span(),
            format!("invalid duration \"{text}\": use e.g. \"250ms\", \"5s\", \"2m\", \"1h\""),
        )
    };
    let digits = text
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let (number, unit) = text.trim().split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(number * factor)
}

/// "64MiB", "1GiB", "512KiB", "100MB", or a number of bytes → bytes, read
/// by the same parser as the host's `--task-memory` (crate `weir-units`).
fn memory_bytes(value: &Expr) -> syn::Result<u64> {
    if let Ok(bytes) = integer(value) {
        return Ok(bytes);
    }
    let text = string(value)?;
    weir_units::parse_memory_size(&text).map_err(|e| syn::Error::new(value.span(), e))
}
