//! Records the git commit the binary is built from, for `gatehouse version`. Builds from a source
//! tarball (no git) simply have no commit; `GATEHOUSE_GIT_COMMIT` overrides the lookup, e.g. in a
//! container build that does not copy `.git`.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn rerun_if_exists(path: &str) {
    if Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=GATEHOUSE_GIT_COMMIT");
    let commit = std::env::var("GATEHOUSE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                rerun_if_exists(&format!("{dir}/HEAD"));
            }
            if let (Some(common), Some(head_ref)) = (
                git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
                git(&["rev-parse", "--symbolic-full-name", "HEAD"]),
            ) {
                rerun_if_exists(&format!("{common}/{head_ref}"));
                rerun_if_exists(&format!("{common}/packed-refs"));
            }
            Some(commit)
        });
    if let Some(commit) = commit {
        println!("cargo:rustc-env=GATEHOUSE_GIT_COMMIT={commit}");
    }
}
