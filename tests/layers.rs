//! The crate's modules form one-way layers: every `crate::` path in `src/` must point at a
//! module below the one it is written in (or at a leaf). A new edge against the order fails
//! this test, naming the file. Run alone: `cargo test --release --test layers`;
//! `JARVIS_LAYERS_SRC=path/to/src` checks another tree.
//!
//! Order, bottom up: kernels < ops < model < plan < calibrate < quantize < learn < runtime <
//! cli < python. Leaves any module may use: error, files, vision, monitor (they use only error
//! and files themselves).

use std::collections::BTreeSet;
use std::path::Path;

/// The layered modules, bottom first.
const LAYERS: [&str; 10] = [
    "kernels",
    "ops",
    "model",
    "plan",
    "calibrate",
    "quantize",
    "learn",
    "runtime",
    "cli",
    "python",
];

/// Modules any other may use, and what each of them may use itself.
const LEAVES: [(&str, &[&str]); 4] = [
    ("error", &[]),
    ("files", &["error"]),
    ("vision", &["error", "files"]),
    ("monitor", &["error", "files"]),
];

/// Whether module `from` may refer to module `to`.
fn allowed(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    if let Some((_, uses)) = LEAVES.iter().find(|(leaf, _)| *leaf == from) {
        return uses.contains(&to);
    }
    if LEAVES.iter().any(|(leaf, _)| *leaf == to) {
        return true;
    }
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    match (rank(from), rank(to)) {
        (Some(a), Some(b)) => b < a,
        _ => false,
    }
}

/// `text` without comments and the contents of string and char literals.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1).copied()) {
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            ('"', _) => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // Char literals ('\n', '\'', 'x'), not lifetimes ('a).
            ('\'', Some('\\')) => {
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            ('\'', _) if chars.get(i + 2) == Some(&'\'') => i += 3,
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn identifier(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// The first path segments inside the `{ … }` group that starts `group`.
fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut item, mut heads) = (0usize, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    heads.push(std::mem::take(&mut item));
                    break;
                }
            }
            ',' if depth == 1 => {
                heads.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    heads.iter().map(|h| identifier(h.trim_start()).to_string()).filter(|h| !h.is_empty()).collect()
}

/// The top-level modules `code` names through `crate::` paths (`use crate::{a::x, b}` too);
/// an exported macro resolves to the module whose file defines it.
fn crate_references(code: &str, macros: &[(String, String)]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = code[at + "crate::".len()..].trim_start();
        if rest.starts_with('{') {
            found.extend(group_heads(rest));
            continue;
        }
        let name = identifier(rest);
        // `#[macro_export]` macros live at the crate root (`crate::name!`, `use crate::name`).
        match macros.iter().find(|(m, _)| m == name) {
            Some((_, module)) => found.insert(module.clone()),
            None => found.insert(name.to_string()),
        };
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The edges against the layer order, as `from -> to (file)`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let module_of = |path: &Path| -> Option<String> {
        let relative = path.strip_prefix(src).ok()?;
        let first = relative.components().next()?.as_os_str().to_str()?;
        let module = first.strip_suffix(".rs").unwrap_or(first);
        // The crate root only declares modules; the binary is the CLI's entry point.
        match module {
            "lib" => None,
            "bin" => Some("cli".to_string()),
            _ => Some(module.to_string()),
        }
    };
    let sources: Vec<(std::path::PathBuf, String)> = files
        .iter()
        .filter_map(|f| Some((f.clone(), code_only(&std::fs::read_to_string(f).ok()?))))
        .collect();
    let macros: Vec<(String, String)> = sources
        .iter()
        .flat_map(|(path, code)| {
            let module = module_of(path);
            code.match_indices("macro_rules!")
                .filter_map(|(at, _)| {
                    let name = identifier(code[at + "macro_rules!".len()..].trim_start());
                    Some((name.to_string(), module.clone()?))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut found = Vec::new();
    for (path, code) in &sources {
        let Some(from) = module_of(path) else { continue };
        for to in crate_references(code, &macros) {
            if !allowed(&from, &to) {
                found.push(format!("{from} -> {to} ({})", path.display()));
            }
        }
    }
    found
}

#[test]
fn modules_point_down_the_layers_only() {
    // JARVIS_LAYERS_SRC checks another tree (another branch's `src/`) with the same rules.
    let src = match std::env::var_os("JARVIS_LAYERS_SRC") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    };
    let found = violations(&src);
    assert!(found.is_empty(), "edges against the layer order:\n{}", found.join("\n"));
}

#[test]
fn the_check_finds_an_upward_edge() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod model; pub mod quantize;");
    write(
        "model/mod.rs",
        "// crate::quantize in a comment is not an edge\nconst S: &str = \"crate::quantize\";\n\
         use crate::{error::Error, quantize::{qdq, input}};\n",
    );
    write("quantize/mod.rs", "use crate::model::OnnxModel; use crate::probe; crate::probe!();");
    write("vision/mod.rs", "#[macro_export] macro_rules! probe { () => {} }\nuse crate::files;");
    write("monitor/mod.rs", "fn f() { crate::runtime::THREADS_ENV; }");
    let found = violations(dir.path());
    let model = dir.path().join("model/mod.rs");
    let monitor = dir.path().join("monitor/mod.rs");
    assert_eq!(
        found,
        vec![
            format!("model -> quantize ({})", model.display()),
            format!("monitor -> runtime ({})", monitor.display()),
        ]
    );
}
