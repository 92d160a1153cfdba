//! Build-time facts for `harmonylite --version`: the git commit and the target triple.
//!
//! `HL_GIT_COMMIT` in the environment wins (a build from a source tarball can set it);
//! otherwise `git rev-parse --short=12 HEAD` (the commit, not whether the tree was edited:
//! watching every source file would rerun this on each edit); outside a git checkout, or
//! without git, "unknown". No crates: std only.
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=HL_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=HL_TARGET={target}");

    let commit = match std::env::var("HL_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=HL_GIT_COMMIT={commit}");
}

fn from_git() -> Option<String> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let dir = manifest.to_str()?;
    // Only this repository's own checkout counts (not a parent folder's repository).
    let top = git(&["-C", dir, "rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    let commit = git(&["-C", dir, "rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs. Only files that
    // exist (a missing one would rerun this script on every build).
    let git_dir = PathBuf::from(git(&["-C", dir, "rev-parse", "--absolute-git-dir"])?);
    let common = git(&["-C", dir, "rev-parse", "--git-common-dir"])
        .map(|c| {
            let p = PathBuf::from(c);
            if p.is_absolute() {
                p
            } else {
                manifest.join(p)
            }
        })
        .unwrap_or_else(|| git_dir.clone());
    let mut watch = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(r) = git(&["-C", dir, "symbolic-ref", "-q", "HEAD"]) {
        watch.push(common.join(r));
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Some(commit)
}
