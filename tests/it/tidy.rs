//! Tidy checks over the source tree: every Rust file starts with a `//!` line saying what lives there.

use crate::support::repo_root;

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        let d = repo_root().join(dir);
        if d.exists() {
            rust_files(&d, &mut files);
        }
    }
    assert!(files.len() > 10, "found the sources: {}", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//! "))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:?}"
    );
}

/// ARCHITECTURE.md's codemap names every source file: each folder on its
/// path (as `name/`) and the file itself (`mod.rs` and the `tests.rs`
/// beside a file are covered by their folder's entry).
#[test]
fn the_codemap_names_every_source_file() {
    let root = repo_root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 30, "found the sources: {}", files.len());
    let unnamed: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&src).unwrap().to_string_lossy().into_owned())
        .filter(|rel| {
            let parts: Vec<&str> = rel.split('/').collect();
            let (file, dirs) = parts.split_last().unwrap();
            // A folder is named as `name/`, or is the folder of a named `name.rs`.
            let dirs_named = dirs
                .iter()
                .all(|d| map.contains(&format!("{d}/")) || map.contains(&format!("{d}.rs")));
            let file_named = matches!(*file, "mod.rs" | "tests.rs") || map.contains(*file);
            !(map.contains(rel.as_str()) || dirs_named && file_named)
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "files ARCHITECTURE.md's codemap does not name: {unnamed:?}"
    );
}
