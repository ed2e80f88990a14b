//! Build errors a person can read: the guest language's own error (file,
//! line, message, the line of code) and one line of advice, picked out of
//! what componentize-py or jco printed, without the toolchain's backtrace.
//!
//! componentize-py runs the app's imports at build time and reports a failure
//! as a Python traceback wrapped in its own (Rust) error with a stack
//! backtrace; jco's bundler (rolldown) reports unresolved imports and syntax
//! errors as framed diagnostics, and QuickJS an exception thrown while the
//! module ran. clang prints `file:line:col: error:` lines itself; the first
//! is kept, with a count of the rest. Only the guest's part is kept. When nothing is recognised, the
//! output is shown with the backtraces cut out ([`without_backtraces`]).

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A guest-language error, as the language tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// `app.py:3` or `app.js:1:19`, as the user named the project.
    pub location: Option<String>,
    pub message: String,
    /// The line of code, trimmed.
    pub code: Option<String>,
    pub advice: String,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{location}: {}", self.message)?,
            None => write!(f, "{}", self.message)?,
        }
        if let Some(code) = &self.code {
            write!(f, "\n    {code}")?;
        }
        write!(f, "\nhint: {}", self.advice)
    }
}

/// The folders componentize-py is given, in order: it names them `/0/`,
/// `/1/`, ... in tracebacks. The project's sources are the second.
pub const PYTHON_PROJECT_DIR: &str = "/1/";

/// Reads componentize-py's output for the Python error behind it.
pub fn python(output: &str, project: &Path) -> Option<Diagnosis> {
    let lines: Vec<&str> = output.lines().collect();
    // The last traceback is the app's; the one before is componentize-py's
    // own script, which only re-raised it.
    let start = lines
        .iter()
        .rposition(|l| l.trim_end().ends_with("Traceback (most recent call last):"))?;
    let mut frames: Vec<(String, Option<u32>, Option<String>)> = Vec::new();
    let mut message = None;
    let mut i = start + 1;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("File \"") {
            let (file, rest) = rest.split_once('"').unwrap_or((rest, ""));
            let number = rest
                .split("line ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok());
            let code = lines
                .get(i + 1)
                .filter(|next| next.starts_with("    ") && !next.trim().starts_with("File \""))
                .map(|next| next.trim().to_string());
            if code.is_some() {
                i += 1;
            }
            frames.push((file.to_string(), number, code));
        } else if trimmed.is_empty() {
            if message.is_some() {
                break;
            }
        } else if !line.starts_with(' ') {
            message = Some(trimmed.to_string());
            break;
        }
        i += 1;
    }
    let message = message?;
    let frame = frames
        .iter()
        .rev()
        .find(|(file, ..)| file.starts_with(PYTHON_PROJECT_DIR))
        .or_else(|| frames.last());
    let location = frame.map(|(file, line, _)| {
        let shown = match file.strip_prefix(PYTHON_PROJECT_DIR) {
            Some(relative) => project.join(relative).display().to_string(),
            None => file.clone(),
        };
        match line {
            Some(line) => format!("{shown}:{line}"),
            None => shown,
        }
    });
    let code = frame.and_then(|(.., code)| code.clone());
    let advice = python_advice(&message);
    Some(Diagnosis {
        location,
        message,
        code,
        advice,
    })
}

fn python_advice(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("ModuleNotFoundError: No module named '") {
        let module = rest.split(['\'', '.']).next().unwrap_or(rest);
        return format!(
            "add `{module}` to [project] dependencies in pyproject.toml (its PyPI name may differ); `host build` installs pure-Python packages from PyPI into the component"
        );
    }
    if message.starts_with("SyntaxError") || message.starts_with("IndentationError") {
        return "fix the syntax at that line".into();
    }
    "this was raised while the app was imported at build time (componentize-py runs module-level code once when it builds); move work that needs a run into a @flow or @task".into()
}

/// Reads jco's output for the JavaScript error behind it. `scratch` is the
/// folder jco ran in (the bundler names files relative to it), `project` the
/// project's folder as found on disk and `shown` as the user named it.
pub fn javascript(output: &str, scratch: &Path, project: &Path, shown: &Path) -> Option<Diagnosis> {
    let lines: Vec<&str> = output.lines().collect();
    // A bundler diagnostic: `[CODE] message`, then `╭─[ FILE:LINE:COL ]`, then ` N │ code`.
    if let Some(start) = lines.iter().position(|l| bundler_code(l).is_some()) {
        let (code_name, message) = bundler_code(lines[start])?;
        let mut location = None;
        let mut code = None;
        for line in &lines[start + 1..] {
            if bundler_code(line).is_some() {
                break;
            }
            if location.is_none()
                && let Some(at) = line.split("─[").nth(1)
            {
                let at = at.trim().trim_end_matches(']').trim();
                location = Some(display_js_location(at, scratch, project, shown));
            } else if code.is_none()
                && let Some((number, text)) = line.split_once('│')
                && number.trim().parse::<u32>().is_ok()
            {
                code = Some(text.trim().to_string());
            }
        }
        let more = lines
            .iter()
            .skip(start + 1)
            .filter(|l| bundler_code(l).is_some())
            .count();
        let unresolved = message
            .strip_prefix("Could not resolve '")
            .and_then(|rest| rest.split('\'').next());
        let (message, advice) = match (code_name, unresolved) {
            ("UNRESOLVED_IMPORT", Some(module)) => {
                let package = npm_package(module);
                (
                    format!("cannot find the module '{module}'"),
                    format!(
                        "add \"{package}\" to \"dependencies\" in package.json; `host build` installs it from npm and bundles it"
                    ),
                )
            }
            ("PARSE_ERROR", _) => (message.to_string(), "fix the syntax at that line".into()),
            _ => (
                message.to_string(),
                "the bundler could not read the app; see the line above".into(),
            ),
        };
        let message = if more > 0 {
            format!("{message} (and {more} more errors)")
        } else {
            message
        };
        return Some(Diagnosis {
            location,
            message,
            code,
            advice,
        });
    }
    // An exception thrown while the module ran at build time (QuickJS).
    let marker = "Failed to finish JavaScript module evaluation: ";
    let at = output.find(marker)?;
    let message = output[at + marker.len()..]
        .lines()
        .next()?
        .trim()
        .to_string();
    Some(Diagnosis {
        location: None,
        message,
        code: None,
        advice: "this was thrown while the app's top-level code ran at build time (jco runs it once when it builds); move work that needs a run into a flow or task".into(),
    })
}

/// `[UNRESOLVED_IMPORT] Could not resolve ...` → (code, message).
fn bundler_code(line: &str) -> Option<(&str, &str)> {
    let rest = line.split_once('[')?.1;
    let (code, message) = rest.split_once("] ")?;
    let is_code = !code.is_empty()
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
    is_code.then_some((code, message.trim()))
}

/// The package an import names: `lodash/fp` → `lodash`, `@scope/pkg/x` → `@scope/pkg`.
fn npm_package(module: &str) -> String {
    let mut parts = module.split('/');
    match (parts.next(), parts.next()) {
        (Some(scope), Some(name)) if scope.starts_with('@') => format!("{scope}/{name}"),
        (Some(name), _) => name.to_string(),
        _ => module.to_string(),
    }
}

/// `../../p/app.js:1:19` (relative to the scratch folder) → `p/app.js:1:19`
/// as the user named the project.
fn display_js_location(at: &str, scratch: &Path, project: &Path, shown: &Path) -> String {
    let mut parts = at.rsplitn(3, ':');
    let (column, line, file) = (parts.next(), parts.next(), parts.next());
    let (Some(column), Some(line), Some(file)) = (column, line, file) else {
        return at.to_string();
    };
    let absolute = normalize(&scratch.join(file));
    let file = match absolute.strip_prefix(project) {
        Ok(relative) => shown.join(relative).display().to_string(),
        Err(_) => file.to_string(),
    };
    format!("{file}:{line}:{column}")
}

/// `a/b/../c` → `a/c`, without touching the disk.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The output with Rust and JavaScript stack backtraces cut out.
pub fn without_backtraces(output: &str) -> String {
    let mut kept = Vec::new();
    let mut in_backtrace = false;
    for line in output.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("Stack backtrace:") {
            in_backtrace = true;
            continue;
        }
        if in_backtrace {
            // A Rust backtrace: numbered frames and their `at` lines.
            let frame = trimmed
                .split_once(':')
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
            if frame || trimmed.starts_with("at ") {
                continue;
            }
            in_backtrace = false;
        }
        if trimmed.starts_with("at ") && (line.contains("file://") || line.contains("node:")) {
            continue;
        }
        kept.push(line);
    }
    kept.join("\n").trim().to_string()
}

/// What part of the C toolchain clang's output says is missing, if any: the
/// linker, the compiler runtime, or wasi-libc (whose headers the SDK includes
/// first, so a missing libc shows as a header not found in an SDK file).
pub fn c_toolchain_missing(output: &str, sdk: &Path) -> Option<String> {
    let sdk = sdk.to_string_lossy();
    output.lines().find_map(|line| {
        let missing = if line.contains("unable to execute command") && line.contains("wasm-ld") {
            "the wasm-ld linker"
        } else if line.contains("libclang_rt.builtins-wasm32") {
            "the wasm32 compiler runtime"
        } else if line.contains("unable to find library -lc++") {
            // Before `-lc`, which it starts with.
            "libc++ (the C++ standard library for wasm32-wasi)"
        } else if line.contains("crt1-reactor.o")
            || line.contains("unable to find library -lc")
            || (line.starts_with(sdk.as_ref()) && line.contains("file not found"))
        {
            "wasi-libc"
        } else {
            return None;
        };
        Some(missing.to_string())
    })
}

/// Reads clang's (or wasm-ld's) output for the first error in the guest's
/// code: `file:line:col: error: message` and the line of code below it.
/// Paths into the build's SDK folder are shown as the SDK's file names.
pub fn c(output: &str, sdk: &Path) -> Option<Diagnosis> {
    let sdk = format!("{}/", sdk.to_string_lossy());
    let lines: Vec<&str> = output.lines().collect();
    let mut errors = lines.iter().enumerate().filter_map(|(i, line)| {
        let line = line.strip_prefix(sdk.as_str()).unwrap_or(line);
        if let Some((location, message)) = line
            .split_once(": fatal error: ")
            .or_else(|| line.split_once(": error: "))
            && !location.starts_with("clang")
            && !location.starts_with("wasm-ld")
        {
            let code = lines
                .get(i + 1)
                .filter(|next| !next.trim().is_empty() && !next.contains(": "))
                .map(|next| next.trim().to_string());
            return Some((Some(location.to_string()), message.to_string(), code));
        }
        // wasm-ld: error: /tmp/app-1234.o: undefined symbol: g
        let message = line.strip_prefix("wasm-ld")?.split_once(": error: ")?.1;
        let message = match message.split_once(": undefined symbol: ") {
            Some((_, symbol)) => format!("undefined symbol: {symbol}"),
            None => message.to_string(),
        };
        Some((None, message, None))
    });
    let (location, message, code) = errors.next()?;
    let more = errors.count();
    let mut advice = c_advice(&message);
    if more > 0 {
        advice.push_str(&format!(
            " ({more} more error{} after this one: build again once it is fixed)",
            if more == 1 { "" } else { "s" }
        ));
    }
    Some(Diagnosis {
        location,
        message,
        code,
        advice,
    })
}

fn c_advice(message: &str) -> String {
    if let Some(symbol) = message.strip_prefix("undefined symbol: ") {
        return format!(
            "define `{symbol}` in one of the project's files (every .c, .cc, .cpp and .cxx file beside weir.toml is compiled), or do not use it"
        );
    }
    if message.contains("file not found") {
        return "put the header in the project folder, or name its folder in weir.toml: cflags = [\"-Ipath\"]; wasi-libc has the C standard headers, libc++ the C++ ones (for .cpp files, with language = \"cpp\")".into();
    }
    if message.contains("with exceptions disabled") {
        return "C++ guests are built with -fno-exceptions (clang has no exception handling for WASI): fail the task with `return weir_fail(\"...\");` instead of throwing".into();
    }
    "fix the code at that line".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What componentize-py 0.25.1 printed for `import json5` (RUST_BACKTRACE=1).
    const MISSING_MODULE: &str = r#"Traceback (most recent call last):
  File "<string>", line 1, in <module>
AssertionError: Traceback (most recent call last):
  File "/0/weir_entry.py", line 2, in <module>
    import app  # noqa: F401  (declares the flows and tasks)
    ^^^^^^^^^^
  File "/1/app.py", line 1, in <module>
    import json5
ModuleNotFoundError: No module named 'json5'


Caused by:
    ModuleNotFoundError: No module named 'json5'

Stack backtrace:
   0: <componentize_py::ComponentGenerator>::generate::{closure#0}
   1: componentize_py::command::run::<std::ffi::os_str::OsString>
  10: cfunction_vectorcall_NOARGS
             at /tmp/python-build/Python-3.11.7/Objects/methodobject.c:486:24
"#;

    #[test]
    fn a_missing_python_module_names_the_file_line_and_the_dependency_to_add() {
        let d = python(MISSING_MODULE, Path::new("pyerr")).unwrap();
        assert_eq!(d.location.as_deref(), Some("pyerr/app.py:1"));
        assert_eq!(d.message, "ModuleNotFoundError: No module named 'json5'");
        assert_eq!(d.code.as_deref(), Some("import json5"));
        assert!(d.advice.contains("add `json5` to [project] dependencies"));
        let shown = d.to_string();
        assert!(
            !shown.contains("componentize_py") && !shown.contains("Traceback"),
            "{shown}"
        );
    }

    #[test]
    fn a_python_syntax_error_and_a_raise_at_import_are_told_with_their_line() {
        let syntax = r#"AssertionError: Traceback (most recent call last):
  File "/0/weir_entry.py", line 2, in <module>
    import app
  File "/1/pkg/util.py", line 17
    def broken(:
               ^
SyntaxError: invalid syntax
"#;
        let d = python(syntax, Path::new("p")).unwrap();
        assert_eq!(d.location.as_deref(), Some("p/pkg/util.py:17"));
        assert_eq!(d.message, "SyntaxError: invalid syntax");
        assert_eq!(d.code.as_deref(), Some("def broken(:"));
        let raised = r#"AssertionError: Traceback (most recent call last):
  File "/1/app.py", line 18, in <module>
    x["nope"]
    ~^^^^^^^^
KeyError: 'nope'
"#;
        let d = python(raised, Path::new("p")).unwrap();
        assert_eq!(d.location.as_deref(), Some("p/app.py:18"));
        assert_eq!(d.message, "KeyError: 'nope'");
        assert!(d.advice.contains("build time"), "{}", d.advice);
        assert_eq!(python("error: something else", Path::new("p")), None);
    }

    #[test]
    fn an_unresolved_js_import_names_the_file_line_and_the_package_to_add() {
        let output = r#"../../../jserr/app.js (1:18) [UNRESOLVED_IMPORT] Could not resolve 'json5/lib' in ../../../jserr/app.js
   ╭─[ ../../../jserr/app.js:1:19 ]
   │
 1 │ import JSON5 from "json5/lib";
   │                   ───┬───
   │ Help: The "main" field here was ignored.
───╯
(jco componentize) [Error: : Failed to evaluate user JavaScript module: ...
"#;
        let d = javascript(
            output,
            Path::new("/h/builds/.js-1.tmp"),
            Path::new("/jserr"),
            Path::new("jserr"),
        )
        .unwrap();
        assert_eq!(d.location.as_deref(), Some("jserr/app.js:1:19"));
        assert_eq!(d.message, "cannot find the module 'json5/lib'");
        assert_eq!(d.code.as_deref(), Some("import JSON5 from \"json5/lib\";"));
        assert!(d.advice.contains("add \"json5\" to \"dependencies\""));
        assert_eq!(npm_package("@scope/pkg/x"), "@scope/pkg");
    }

    #[test]
    fn a_js_syntax_error_and_a_throw_at_load_are_told_without_the_stack() {
        let output = "(jco componentize) Error: Build failed with 2 errors:\n\n[PARSE_ERROR] Expected function name\n    ╭─[ ../../p/app.js:19:10 ]\n    │\n 19 │ function (\n    │          ┬\n────╯\n\n[PARSE_ERROR] Expected `)` but found `EOF`\n    at aggregateBindingErrorsIntoJsError (file:///t/node_modules/rolldown/dist/error.mjs:110:18)\n";
        let d = javascript(output, Path::new("/b/s"), Path::new("/p"), Path::new("p")).unwrap();
        assert_eq!(d.location.as_deref(), Some("p/app.js:19:10"));
        assert_eq!(d.message, "Expected function name (and 1 more errors)");
        assert_eq!(d.code.as_deref(), Some("function ("));
        let thrown = "(jco componentize) [Error: : Failed to evaluate user JavaScript module: Failed to finish JavaScript module evaluation: Error: cannot read property 'foo' of null\n    at <anonymous> (/entry.js:769:1)\n] {";
        let d = javascript(thrown, Path::new("/b"), Path::new("/p"), Path::new("p")).unwrap();
        assert_eq!(d.message, "Error: cannot read property 'foo' of null");
        assert!(d.advice.contains("top-level code"));
    }

    #[test]
    fn backtraces_are_cut_from_output_nothing_else_recognised() {
        let cleaned = without_backtraces(MISSING_MODULE);
        assert!(cleaned.contains("ModuleNotFoundError"), "{cleaned}");
        assert!(
            !cleaned.contains("componentize_py") && !cleaned.contains("methodobject.c"),
            "{cleaned}"
        );
        let js =
            "Error: x\n    at f (file:///n/a.mjs:1:1)\n    at async g (node:internal/x:2:2)\ndone";
        assert_eq!(without_backtraces(js), "Error: x\ndone");
    }

    /// What Debian's clang 14 printed for these failures.
    #[test]
    fn a_c_error_is_its_first_clang_line_and_the_code() {
        let output = "broken/app.c:2:23: error: expected ';' after return statement\nint f(void){return g() }\n                      ^\n                      ;\nbroken/app.c:3:21: error: use of undeclared identifier 'undefined_var'\nint h(void){ return undefined_var; }\n                    ^\n2 errors generated.\n";
        let d = c(output, Path::new("/b/.c-1.tmp-9/sdk")).unwrap();
        assert_eq!(d.location.as_deref(), Some("broken/app.c:2:23"));
        assert_eq!(d.message, "expected ';' after return statement");
        assert_eq!(d.code.as_deref(), Some("int f(void){return g() }"));
        assert!(d.advice.contains("1 more error after"), "{}", d.advice);

        let link = "wasm-ld-14: error: /tmp/link-4629ed.o: undefined symbol: g\nclang: error: linker command failed with exit code 1 (use -v to see invocation)\n";
        let d = c(link, Path::new("/sdk")).unwrap();
        assert_eq!(
            (d.location, d.message.as_str()),
            (None, "undefined symbol: g")
        );
        assert!(d.advice.contains("define `g`"), "{}", d.advice);

        // An error inside the SDK is named by the SDK's file, not the scratch folder.
        let sdk = "In file included from app.c:1:\n/b/.c-1.tmp-9/sdk/weir.h:9:3: error: unknown type name 'x'\n  x y;\n  ^\n";
        let d = c(sdk, Path::new("/b/.c-1.tmp-9/sdk")).unwrap();
        assert_eq!(d.location.as_deref(), Some("weir.h:9:3"));
        assert_eq!(c("clang: error: no input files\n", Path::new("/sdk")), None);

        // A `throw` in a C++ guest (built with -fno-exceptions) says what to do instead.
        let thrown = "app.cpp:4:5: error: cannot use 'throw' with exceptions disabled\n    throw std::runtime_error(\"no\");\n    ^\n1 error generated.\n";
        let d = c(thrown, Path::new("/sdk")).unwrap();
        assert_eq!(d.location.as_deref(), Some("app.cpp:4:5"));
        assert_eq!(d.code.as_deref(), Some("throw std::runtime_error(\"no\");"));
        assert!(d.advice.contains("weir_fail"), "{}", d.advice);
    }

    #[test]
    fn a_missing_c_toolchain_part_is_named() {
        let sdk = Path::new("/b/sdk");
        let missing = |output: &str| c_toolchain_missing(output, sdk);
        assert_eq!(
            missing(
                "clang: error: unable to execute command: Executable \"wasm-ld-14\" doesn't exist!"
            )
            .as_deref(),
            Some("the wasm-ld linker")
        );
        assert_eq!(
            missing("wasm-ld-14: error: cannot open crt1-reactor.o: No such file or directory")
                .as_deref(),
            Some("wasi-libc")
        );
        assert_eq!(
            missing("In file included from app.c:1:\n/b/sdk/weir.h:45:10: fatal error: 'stdlib.h' file not found").as_deref(),
            Some("wasi-libc")
        );
        assert_eq!(
            missing("wasm-ld-14: error: cannot open /x/lib/wasi/libclang_rt.builtins-wasm32.a: No such file").as_deref(),
            Some("the wasm32 compiler runtime")
        );
        assert_eq!(
            missing("wasm-ld-14: error: unable to find library -lc++").as_deref(),
            Some("libc++ (the C++ standard library for wasm32-wasi)")
        );
        assert_eq!(
            missing("wasm-ld-14: error: unable to find library -lc").as_deref(),
            Some("wasi-libc")
        );
        // The project's own missing header is the project's error, not the toolchain's.
        assert_eq!(
            missing("app.c:1:10: fatal error: 'mine.h' file not found"),
            None
        );
    }
}
