//! The architecture's invariants, checked by reading the sources and `cargo metadata` (in the
//! spirit of rust-analyzer's `tidy` tests): what docs/ARCHITECTURE.md promises fails here when
//! it stops being true.
//!
//! * no two modules of a crate import each other in a circle (`use crate::…`, `crate::…` paths,
//!   `super::…`), at every level of the module tree;
//! * every crate depends only on crates of a lower layer of the table in docs/ARCHITECTURE.md
//!   ("Layers"), and the crates it marks "no candle" have no candle crate in their dependency
//!   tree;
//! * no function outside tests is longer than [`MAX_FN_LINES`] lines, bar the ones listed in
//!   [`LONG_FUNCTIONS`], which may not grow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a function may be, in lines from its `fn` line to its closing brace.
const MAX_FN_LINES: usize = 120;

/// Functions longer than [`MAX_FN_LINES`] that are still to be split: `(file, function,
/// lines)`. A listed function may shrink but not grow; when it is split, remove its line.
const LONG_FUNCTIONS: &[(&str, &str, usize)] = &[];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file of a crate's `src/` (`ops::conv2d::kernels`; the root is empty).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    // `bin/x.rs` files are their own crates' roots.
    if parts.first().is_some_and(|p| p == "bin") {
        return Vec::new();
    }
    parts
}

/// The text of a file without its `#[cfg(test)]` modules and comments (so that tests and
/// documentation do not count as imports or as function lines).
fn code_without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_cfg_test = false;
    for line in text.lines() {
        let t = line.trim_start();
        if skip_depth.is_none() && t.starts_with("#[cfg(test)]") {
            pending_cfg_test = true;
            continue;
        }
        // The line without a trailing comment (indentation kept: function ends are found by it).
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        let code = code.trim_end();
        let opens = code.matches('{').count();
        let closes = code.matches('}').count();
        if pending_cfg_test && skip_depth.is_none() {
            pending_cfg_test = false;
            if code.trim_start().starts_with("mod ") && code.ends_with(';') {
                continue; // `#[cfg(test)] mod tests;`: the file is skipped by name
            }
            skip_depth = Some(depth);
        }
        depth = (depth + opens).saturating_sub(closes);
        if let Some(d) = skip_depth {
            if depth <= d && (opens > 0 || closes > 0) {
                skip_depth = None;
            }
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Module paths a file's code refers to: `crate::a::b::…` and `super::…` paths, resolved to
/// module paths (the caller keeps those that exist).
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let text = code;
    for (start, _) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        // Not part of a longer identifier (`recallseg_crate::`).
        if start > 0 {
            let prev = text[..start].chars().last().unwrap();
            if prev.is_alphanumeric() || prev == '_' {
                continue;
            }
        }
        let rest = &text[start..];
        let mut segs: Vec<String> = Vec::new();
        let mut base: Vec<String>;
        let mut r = rest;
        if r.starts_with("crate::") {
            base = Vec::new();
            r = &r["crate::".len()..];
        } else {
            // `super` of `a/b.rs` (module a::b) is `a`; of `a/b/mod.rs` also `a`.
            base = module.to_vec();
            while r.starts_with("super::") {
                base.pop();
                r = &r["super::".len()..];
            }
        }
        // Path segments, and a `{a, b::c}` group one level deep.
        let ident = |s: &str| -> usize {
            s.char_indices()
                .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
                .map_or(s.len(), |(i, _)| i)
        };
        loop {
            let n = ident(r);
            if n == 0 {
                if let Some(group) = r.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    for item in group[..end].split(',') {
                        let item = item.trim();
                        let mut p = base.clone();
                        p.extend(segs.iter().cloned());
                        p.extend(
                            item.split("::")
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty() && s != "self" && s != "*"),
                        );
                        out.push(p);
                    }
                }
                break;
            }
            segs.push(r[..n].to_string());
            r = &r[n..];
            if let Some(next) = r.strip_prefix("::") {
                r = next;
            } else {
                break;
            }
        }
        base.extend(segs);
        out.push(base);
    }
    out
}

/// The import graph of one crate's modules and the cycles among siblings.
fn module_cycles(src: &Path) -> Vec<String> {
    let files = rust_files(src);
    let mut modules: BTreeSet<Vec<String>> = BTreeSet::new();
    for f in &files {
        let m = module_path(src, f);
        for k in 0..=m.len() {
            modules.insert(m[..k].to_vec());
        }
    }
    // Edges between siblings: X → Y when code inside X refers to something inside Y, X and Y
    // children of the same module.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String, String)>> = BTreeMap::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name == "tests.rs" || f.components().any(|c| c.as_os_str() == "tests") {
            continue; // test modules may import anything
        }
        if f.components().any(|c| c.as_os_str() == "bin") {
            continue;
        }
        let from = module_path(src, f);
        let code = code_without_tests(&std::fs::read_to_string(f).unwrap());
        for target in references(&from, &code) {
            // The longest existing module prefix of the path.
            let mut to = target.clone();
            while !modules.contains(&to) {
                to.pop();
            }
            // The lowest common ancestor and the children of it on each side.
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common >= from.len() || common >= to.len() {
                continue; // a module and its own ancestor or descendant
            }
            edges.entry(from[..common].to_vec()).or_default().insert((
                from[common].clone(),
                to[common].clone(),
                f.strip_prefix(src).unwrap().display().to_string(),
            ));
        }
    }
    let mut cycles = Vec::new();
    for (parent, es) in &edges {
        let graph: BTreeMap<&str, BTreeSet<&str>> =
            es.iter().fold(BTreeMap::new(), |mut g, (a, b, _)| {
                g.entry(a.as_str()).or_default().insert(b.as_str());
                g
            });
        for scc in strongly_connected(&graph) {
            if scc.len() > 1 {
                let via: Vec<String> = es
                    .iter()
                    .filter(|(a, b, _)| scc.contains(a) && scc.contains(b))
                    .map(|(a, b, f)| format!("{a} → {b} ({f})"))
                    .collect();
                cycles.push(format!(
                    "{}{{{}}}: {}",
                    if parent.is_empty() {
                        String::new()
                    } else {
                        format!("{}::", parent.join("::"))
                    },
                    scc.iter().cloned().collect::<Vec<_>>().join(", "),
                    via.join("; ")
                ));
            }
        }
    }
    cycles
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<BTreeSet<String>> {
    let mut nodes: BTreeSet<&str> = graph.keys().copied().collect();
    for vs in graph.values() {
        nodes.extend(vs.iter().copied());
    }
    let nodes: Vec<&str> = nodes.into_iter().collect();
    let index_of: BTreeMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let n = nodes.len();
    let mut out = Vec::new();
    fn visit(
        v: usize,
        nodes: &[&str],
        index_of: &BTreeMap<&str, usize>,
        graph: &BTreeMap<&str, BTreeSet<&str>>,
        st: &mut (Vec<usize>, Vec<usize>, Vec<bool>, Vec<usize>, usize),
        out: &mut Vec<BTreeSet<String>>,
    ) {
        st.0[v] = st.4;
        st.1[v] = st.4;
        st.4 += 1;
        st.3.push(v);
        st.2[v] = true;
        for w in graph.get(nodes[v]).into_iter().flatten() {
            let w = index_of[w];
            if st.0[w] == usize::MAX {
                visit(w, nodes, index_of, graph, st, out);
                st.1[v] = st.1[v].min(st.1[w]);
            } else if st.2[w] {
                st.1[v] = st.1[v].min(st.0[w]);
            }
        }
        if st.1[v] == st.0[v] {
            let mut scc = BTreeSet::new();
            while let Some(w) = st.3.pop() {
                st.2[w] = false;
                scc.insert(nodes[w].to_string());
                if w == v {
                    break;
                }
            }
            out.push(scc);
        }
    }
    // (index, lowlink, on the stack, the stack, the next index)
    let mut st = (
        vec![usize::MAX; n],
        vec![0; n],
        vec![false; n],
        Vec::new(),
        0,
    );
    for v in 0..n {
        if st.0[v] == usize::MAX {
            visit(v, &nodes, &index_of, graph, &mut st, &mut out);
        }
    }
    out
}

/// The crates' source folders: `crates/*/src` and `xtask/src`.
fn crate_sources() -> Vec<(String, PathBuf)> {
    let root = root();
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                p.join("src"),
            )
        })
        .collect();
    out.push(("xtask".into(), root.join("xtask/src")));
    out.sort();
    out
}

#[test]
fn no_module_imports_in_a_circle() {
    let mut all = Vec::new();
    for (name, src) in crate_sources() {
        for c in module_cycles(&src) {
            all.push(format!("{name}: {c}"));
        }
    }
    assert!(
        all.is_empty(),
        "modules that import each other in a circle (move the shared definition into its own \
         module, or hand the formula in rather than importing it):\n{}",
        all.join("\n")
    );
}

#[test]
fn the_cycle_check_finds_an_introduced_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("ops")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod ops;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::Thing;\n").unwrap();
    std::fs::write(src.join("ops/mod.rs"), "mod x;\nmod y;\n").unwrap();
    std::fs::write(
        src.join("ops/x.rs"),
        "pub(crate) fn f() { super::y::g() }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("ops/y.rs"),
        "use super::{x::f, z};\npub fn g() {}\n",
    )
    .unwrap();
    // No cycle yet: a → b, x → y, y → x? (y imports x: that is one).
    let found = module_cycles(&src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("ops::{x, y}"), "{found:?}");
    // A test module importing anything is not a cycle; a real import back is.
    std::fs::write(
        src.join("b.rs"),
        "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    use crate::a::*;\n}\n",
    )
    .unwrap();
    assert_eq!(module_cycles(&src).len(), 1);
    std::fs::write(src.join("b.rs"), "use crate::a as _;\npub struct Thing;\n").unwrap();
    let found = module_cycles(&src);
    assert!(found.iter().any(|c| c.starts_with("{a, b}")), "{found:?}");
}

/// `(crate, layer, no candle)` rows of the "Layers" table of docs/ARCHITECTURE.md.
fn layers() -> Vec<(String, usize, bool)> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc
        .find("## Layers")
        .expect("docs/ARCHITECTURE.md has a \"## Layers\" section");
    let mut rows = Vec::new();
    for line in doc[start..].lines().skip(1) {
        if line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | layer | crate | candle | what |
        if cells.len() >= 5 {
            if let Ok(layer) = cells[1].parse::<usize>() {
                let name = cells[2].trim_matches('`').to_string();
                rows.push((name, layer, cells[3] == "no"));
            }
        }
    }
    assert!(
        rows.len() >= 10,
        "the Layers table has too few rows: {rows:?}"
    );
    rows
}

#[test]
fn crates_depend_only_on_lower_layers_and_candle_free_crates_stay_so() {
    // This machine's target only: other platforms' crates need not be downloaded.
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &host,
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Normal (non-dev, non-build) dependencies of each package, by name.
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let from = name_of[node["id"].as_str().unwrap()].clone();
        let set = deps.entry(from).or_default();
        for d in node["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                set.insert(name_of[d["pkg"].as_str().unwrap()].clone());
            }
        }
    }
    let table = layers();
    let layer_of: BTreeMap<&str, usize> = table.iter().map(|(n, l, _)| (n.as_str(), *l)).collect();
    let members: Vec<String> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| name_of[id.as_str().unwrap()].clone())
        .collect();
    let mut problems = Vec::new();
    for m in &members {
        let Some(&lm) = layer_of.get(m.as_str()) else {
            problems.push(format!(
                "{m} is not in the Layers table of docs/ARCHITECTURE.md"
            ));
            continue;
        };
        for d in deps.get(m).into_iter().flatten() {
            if let Some(&ld) = layer_of.get(d.as_str()) {
                if ld >= lm {
                    problems.push(format!(
                        "{m} (layer {lm}) depends on {d} (layer {ld}): only lower layers"
                    ));
                }
            }
        }
    }
    // "no candle": nothing in the whole normal dependency tree is a candle crate.
    for (name, _, no_candle) in &table {
        if !no_candle {
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut stack = vec![name.clone()];
        while let Some(p) = stack.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            if p.starts_with("candle") {
                problems.push(format!("{name} is marked \"no candle\" but depends on {p}"));
            }
            stack.extend(deps.get(&p).into_iter().flatten().cloned());
        }
    }
    // The training library has no command-line or plotting dependency.
    for (lib, forbidden) in [("recallseg-trainer", ["clap", "plotters"])] {
        let mut seen = BTreeSet::new();
        let mut stack = vec![lib.to_string()];
        while let Some(p) = stack.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            if forbidden.contains(&p.as_str()) {
                problems.push(format!("{lib} depends on {p}"));
            }
            stack.extend(deps.get(&p).into_iter().flatten().cloned());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `(file, function, lines)` of every function outside tests longer than [`MAX_FN_LINES`].
fn long_functions() -> Vec<(String, String, usize)> {
    let root = root();
    let mut out = Vec::new();
    for (_, src) in crate_sources() {
        for f in rust_files(&src) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name == "tests.rs" {
                continue;
            }
            let code = code_without_tests(&std::fs::read_to_string(&f).unwrap());
            let lines: Vec<&str> = code.lines().collect();
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                let Some(after) = [
                    "fn ",
                    "pub fn ",
                    "pub(crate) fn ",
                    "pub(super) fn ",
                    "async fn ",
                    "unsafe fn ",
                    "pub unsafe fn ",
                    "pub(crate) unsafe fn ",
                    "const fn ",
                    "pub const fn ",
                ]
                .iter()
                .find_map(|p| t.strip_prefix(p)) else {
                    continue;
                };
                let fname: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                // The body: from the first `{` after the signature to its matching `}`.
                let indent = line.len() - t.len();
                let mut end = None;
                for (j, l) in lines.iter().enumerate().skip(i) {
                    let lt = l.trim_start();
                    if j > i && l.len() - lt.len() == indent && lt.starts_with('}') {
                        end = Some(j);
                        break;
                    }
                    if j == i && (lt.ends_with(';') || lt.ends_with('}')) && !lt.ends_with('{') {
                        // A one-line function or a declaration without a body.
                        if lt.ends_with(';') || lt.contains('{') {
                            end = Some(j);
                        }
                        break;
                    }
                }
                if let Some(end) = end {
                    let n = end - i + 1;
                    if n > MAX_FN_LINES {
                        out.push((rel.clone(), fname, n));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn no_function_outside_tests_is_longer_than_the_limit() {
    let mut problems = Vec::new();
    let found = long_functions();
    for (file, f, n) in &found {
        match LONG_FUNCTIONS.iter().find(|(lf, lfn, _)| lf == file && lfn == f) {
            Some(&(_, _, listed)) if *n <= listed => {}
            Some(&(_, _, listed)) => problems.push(format!(
                "{file}: fn {f} grew to {n} lines (listed at {listed}); split it"
            )),
            None => problems.push(format!(
                "{file}: fn {f} is {n} lines (at most {MAX_FN_LINES}); split it by what its parts do"
            )),
        }
    }
    for (lf, lfn, _) in LONG_FUNCTIONS {
        if !found.iter().any(|(f, n, _)| f == lf && n == lfn) {
            problems.push(format!(
                "{lf}: fn {lfn} is no longer too long (or gone): remove it from LONG_FUNCTIONS"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
