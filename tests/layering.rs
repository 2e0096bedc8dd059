//! The house's one rule, checked: no production module imports one that imports it back.
//!
//! A module is a file of `src/` (`src/index/mirror.rs` is `index::mirror`, a folder's `mod.rs` is
//! the folder). An import is any path a file names outside its tests: `use crate::a::b::{C, d::E}`,
//! `crate::a::f()`, `super::g`; it points at the deepest module the path names (an item of
//! `index/mod.rs` named as `crate::index::Index` is `index`). Two imports are not counted:
//! a module naming itself, and a folder's `mod.rs` and its own files naming each other (the folder
//! declares and assembles its files, and they use what it defines: one room). Every other pair must
//! point one way only, so the imports form layers, printed by this test from the bottom up
//! (ARCHITECTURE.md, "Layers", says which way each stage may import).
//!
//! `#[cfg(test)]` items are not production code and are skipped (so are their files, `tests.rs` and
//! `*_tests.rs`), as are `src/main.rs` (the binary
//! uses the library by its name) and `src/lib.rs` (it declares every module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn no_production_module_imports_one_that_imports_it_back() {
    // `LAYERING_SRC` checks another tree (an old commit's `src/`, to see the check go red).
    let src = std::env::var_os("LAYERING_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let report = check(&src);
    println!("{}", report.text);
    assert!(report.cycles.is_empty(), "{}", report.text);
}

/// A planted cycle is found: a gate that cannot fail is no gate.
#[test]
fn a_planted_import_back_is_reported() {
    let dir = std::env::temp_dir().join(format!("quotegw-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("room")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod room;\n").unwrap();
    std::fs::write(
        dir.join("a.rs"),
        // Test code naming `room` (which imports `a`) is not an import: a test module, a
        // `#[cfg(test)]` field (ends at its comma) and statement (at its semicolon).
        "use crate::room::inner::{X, y::Z};\n#[cfg(test)]\nmod tests { use crate::room; }\n\
         struct S {\n    #[cfg(test)]\n    n: crate::room::N,\n    m: u8,\n}\n\
         fn f() {\n    #[cfg(test)]\n    crate::room::g();\n    let _ = 1;\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("room/mod.rs"), "pub mod inner;\nuse super::a;\n").unwrap();
    // A string and a comment naming a module are not imports.
    std::fs::write(
        dir.join("room/inner.rs"),
        "// crate::a::f\nconst S: &str = \"crate::a::f {\";\npub fn g() { crate::a::f(); }\n",
    )
    .unwrap();
    let report = check(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        report.cycles,
        vec![vec!["a".to_string(), "room::inner".to_string()]],
        "{}",
        report.text
    );
}

struct Report {
    /// Each group of modules that import each other, sorted.
    cycles: Vec<Vec<String>>,
    text: String,
}

fn check(src: &Path) -> Report {
    let mut files = Vec::new();
    collect(src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter_map(|f| module_of(src, f).map(|m| (m, f.clone())))
        .collect();
    let tokens: BTreeMap<&String, Vec<(Token, usize)>> = modules
        .iter()
        .map(|(m, file)| {
            let text = std::fs::read_to_string(file).expect("read a source file");
            (m, production_tokens(&lex(&text)))
        })
        .collect();
    // (module, name) → the module a `pub use` there took the name from: an import of
    // `crate::session::Connection` is an import of `session::connection`, where it lives.
    let mut reexports: BTreeMap<(String, String), String> = BTreeMap::new();
    for (module, tokens) in &tokens {
        for (path, _) in pub_uses(tokens) {
            if let (Some(name), Some(target)) = (
                path.last(),
                resolve(module, &path, &modules, &BTreeMap::new()),
            ) {
                if target != **module {
                    reexports.insert(((*module).clone(), name.clone()), target);
                }
            }
        }
    }
    // module → (imported module → the first line naming it)
    let mut imports: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (module, tokens) in &tokens {
        let module = *module;
        for (path, line) in paths(tokens) {
            let Some(target) = resolve(module, &path, &modules, &reexports) else {
                continue;
            };
            if target == *module || parent_and_child(module, &target) {
                continue;
            }
            imports
                .entry(module.clone())
                .or_default()
                .entry(target)
                .or_insert(line);
        }
    }
    let cycles = strongly_connected(&modules, &imports);
    let mut text = String::new();
    let edges: usize = imports.values().map(BTreeMap::len).sum();
    if cycles.is_empty() {
        text += &format!(
            "{} modules, {} imports between them, no cycle. Layers, bottom first (a module imports \
             only from layers below it):\n",
            modules.len(),
            edges
        );
        for (i, layer) in layers(&modules, &imports).iter().enumerate() {
            text += &format!("  {i}: {}\n", layer.join(", "));
        }
    } else {
        for group in &cycles {
            text += &format!("modules that import each other: {}\n", group.join(", "));
            for from in group {
                for (to, line) in imports.get(from).into_iter().flatten() {
                    if group.contains(to) {
                        text +=
                            &format!("  {} line {line} imports {to}\n", modules[from].display());
                    }
                }
            }
        }
    }
    Report { cycles, text }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`; `lib.rs` and `main.rs` are not checked.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    // A module's unit tests in a file of their own (`#[cfg(test)] mod tests;`).
    if parts
        .last()
        .is_some_and(|p| p == "tests" || p.ends_with("_tests"))
    {
        return None;
    }
    Some(parts.join("::"))
}

fn parent_and_child(a: &str, b: &str) -> bool {
    let parent = |m: &str| m.rsplit_once("::").map(|(p, _)| p.to_string());
    parent(a).as_deref() == Some(b) || parent(b).as_deref() == Some(a)
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
    Hash,
}

/// Rust tokens with their line, without comments, strings and chars (which may name a path or hold
/// a brace).
fn lex(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let skip_to = |i: &mut usize, line: &mut usize, end: usize| {
        *line += chars[*i..end.min(chars.len())]
            .iter()
            .filter(|&&c| c == '\n')
            .count();
        *i = end;
    };
    while i < chars.len() {
        let c = chars[i];
        let rest = &chars[i..];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if rest.starts_with(&['/', '/']) {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            skip_to(&mut i, &mut line, end);
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if chars[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            skip_to(&mut i, &mut line, j);
        } else if (c == 'r' || c == 'b')
            && raw_string_start(rest).is_some()
            && !prev_is_ident(&chars, i)
        {
            let (hashes, open) = raw_string_start(rest).unwrap();
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let mut j = i + open;
            while j < chars.len() && !chars[j..].starts_with(&close) {
                j += 1;
            }
            skip_to(&mut i, &mut line, j + close.len());
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            skip_to(&mut i, &mut line, j + 1);
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7f}', '{') or a lifetime ('a).
            if rest.get(1) == Some(&'\\') {
                let end = (i + 2..chars.len())
                    .find(|&j| chars[j] == '\'')
                    .unwrap_or(i + 2);
                skip_to(&mut i, &mut line, end + 1);
            } else if rest.get(2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let end = (i..chars.len())
                .find(|&j| !(chars[j].is_alphanumeric() || chars[j] == '_'))
                .unwrap_or(chars.len());
            out.push((Token::Ident(chars[i..end].iter().collect()), line));
            i = end;
        } else if rest.starts_with(&[':', ':']) {
            out.push((Token::PathSep, line));
            i += 2;
        } else if c == '#' {
            out.push((Token::Hash, line));
            i += 1;
        } else if !c.is_whitespace() {
            out.push((Token::Punct(c), line));
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `r"`, `r#"`, `br"`, `b"`: (number of `#`, length of the opening).
fn raw_string_start(rest: &[char]) -> Option<(usize, usize)> {
    let mut j = 0;
    if rest.first() == Some(&'b') {
        j += 1;
    }
    let raw = rest.get(j) == Some(&'r');
    if raw {
        j += 1;
    }
    if !raw && j == 0 {
        return None;
    }
    let hashes = rest[j..].iter().take_while(|&&c| c == '#').count();
    (rest.get(j + hashes) == Some(&'"') && (raw || hashes == 0)).then_some((hashes, j + hashes + 1))
}

/// The tokens without `#[cfg(test)]` items (the attribute, any attributes after it, and the item up
/// to its closing brace or semicolon).
fn production_tokens(tokens: &[(Token, usize)]) -> Vec<(Token, usize)> {
    let is_cfg_test = |i: usize| {
        let words: Vec<&Token> = tokens[i..].iter().take(6).map(|(t, _)| t).collect();
        words
            == [
                &Token::Hash,
                &Token::Punct('['),
                &Token::Ident("cfg".into()),
                &Token::Punct('('),
                &Token::Ident("test".into()),
                &Token::Punct(')'),
            ]
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if !is_cfg_test(i) {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        // Skip to the item's end: the first `;` or `,` outside braces (a statement, a field), the
        // brace that closes the first, or the enclosing block's end (kept).
        let mut depth = 0usize;
        let mut j = i + 7;
        while j < tokens.len() {
            match tokens[j].0 {
                Token::Punct('{') => depth += 1,
                Token::Punct('}') if depth == 0 => break,
                Token::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                Token::Punct(';') | Token::Punct(',') if depth == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        i = j;
    }
    out
}

/// Every path that starts at `crate`, `super` or `self`, with use-groups expanded: segments and line.
fn paths(tokens: &[(Token, usize)]) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let start = matches!(&tokens[i].0, Token::Ident(w) if w == "crate" || w == "super" || w == "self")
            && tokens.get(i + 1).map(|t| &t.0) == Some(&Token::PathSep)
            && !(i > 0 && tokens[i - 1].0 == Token::PathSep);
        if start {
            i = path(tokens, i, Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads the path at `i` after `prefix` into `out`; returns the index after it.
fn path(
    tokens: &[(Token, usize)],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let line = tokens[i].1;
    loop {
        match tokens.get(i).map(|t| &t.0) {
            Some(Token::Ident(w)) => {
                prefix.push(w.clone());
                i += 1;
            }
            Some(Token::Punct('{')) => {
                i += 1;
                loop {
                    match tokens.get(i).map(|t| &t.0) {
                        Some(Token::Punct('}')) | None => return i + 1,
                        Some(Token::Punct(',')) => i += 1,
                        Some(_) => i = path(tokens, i, prefix.clone(), out),
                    }
                }
            }
            _ => break,
        }
        if tokens.get(i).map(|t| &t.0) == Some(&Token::PathSep) {
            i += 1;
        } else {
            break;
        }
    }
    out.push((prefix, line));
    i
}

/// The paths of `pub use` items (re-exports).
fn pub_uses(tokens: &[(Token, usize)]) -> Vec<(Vec<String>, usize)> {
    let word = |i: usize, w: &str| matches!(tokens.get(i), Some((Token::Ident(x), _)) if x == w);
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        if !word(i, "pub") {
            continue;
        }
        let mut j = i + 1;
        if tokens.get(j).map(|t| &t.0) == Some(&Token::Punct('(')) {
            j += 3;
        }
        if word(j, "use") && matches!(tokens.get(j + 1), Some((Token::Ident(_), _))) {
            path(tokens, j + 1, Vec::new(), &mut out);
        }
    }
    out
}

/// The deepest module `path`, named in `from`, points at, following re-exports to where the item
/// lives.
fn resolve(
    from: &str,
    path: &[String],
    modules: &BTreeMap<String, PathBuf>,
    reexports: &BTreeMap<(String, String), String>,
) -> Option<String> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("super") | Some("self") => {
            base = from.split("::").map(String::from).collect();
            while let Some(word) = rest.first() {
                match word.as_str() {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        // A `use` path relative to the module (`pub use connection::Connection` in a mod.rs).
        _ => base = from.split("::").map(String::from).collect(),
    }
    let mut best =
        (!base.is_empty() && modules.contains_key(&base.join("::"))).then(|| base.join("::"));
    let mut name = base;
    for word in rest {
        name.push(word.clone());
        let joined = name.join("::");
        if modules.contains_key(&joined) {
            best = Some(joined);
        } else {
            if let Some(to) = best
                .as_ref()
                .and_then(|m| reexports.get(&(m.clone(), word.clone())))
            {
                best = Some(to.clone());
            }
            break;
        }
    }
    best
}

/// Tarjan's strongly connected components with more than one module.
fn strongly_connected(
    modules: &BTreeMap<String, PathBuf>,
    imports: &BTreeMap<String, BTreeMap<String, usize>>,
) -> Vec<Vec<String>> {
    struct State<'a> {
        imports: &'a BTreeMap<String, BTreeMap<String, usize>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let imports = s.imports;
        for w in imports.get(v).into_iter().flat_map(BTreeMap::keys) {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[v].min(s.low[w.as_str()]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w.as_str()) {
                let low = s.low[v].min(s.index[w.as_str()]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.out.push(group);
            }
        }
    }
    let mut s = State {
        imports,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for m in modules.keys() {
        if !s.index.contains_key(m.as_str()) {
            visit(&mut s, m);
        }
    }
    s.out.sort();
    s.out
}

/// With no cycle: each module's layer is one above the highest it imports.
fn layers(
    modules: &BTreeMap<String, PathBuf>,
    imports: &BTreeMap<String, BTreeMap<String, usize>>,
) -> Vec<Vec<String>> {
    fn depth(
        m: &str,
        imports: &BTreeMap<String, BTreeMap<String, usize>>,
        memo: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(&d) = memo.get(m) {
            return d;
        }
        let d = imports
            .get(m)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .map(|t| depth(t, imports, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(m.to_string(), d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in modules.keys() {
        let d = depth(m, imports, &mut memo);
        if out.len() <= d {
            out.resize(d + 1, Vec::new());
        }
        out[d].push(m.clone());
    }
    out
}
