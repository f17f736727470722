//! Lexical path rules shared by pack (so a bad tree fails before upload) and unpack (so the
//! server enforces them whatever the client sent).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

pub(crate) enum PathProblem {
    Absolute,
    ParentDir,
}

/// Reduces an entry path to its plain components, so `./a//b` and `a/b` name the same entry and
/// nothing can climb out of or start above the extraction root.
pub(crate) fn normalize(path: &Path) -> Result<PathBuf, PathProblem> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathProblem::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(PathProblem::Absolute),
        }
    }
    Ok(out)
}

pub(crate) enum LinkProblem {
    Escapes,
    ThroughSymlink,
}

/// Checks that `target`, read from the parent directory of `link` (a normalized relative path),
/// stays inside the tree. A purely lexical check is not enough once links chain: with
/// `x/s -> ../y`, the link `l -> x/s/../..` looks inside but the kernel resolves it to the
/// parent of the tree. So a target may not pass *through* any path in `symlinks`; ending on one
/// is fine, because that link is checked on its own.
pub(crate) fn check_link(
    link: &Path,
    target: &Path,
    symlinks: &HashSet<PathBuf>,
) -> Result<(), LinkProblem> {
    if target.as_os_str().is_empty() {
        return Err(LinkProblem::Escapes);
    }
    let mut current = link.parent().map(Path::to_path_buf).unwrap_or_default();
    let components: Vec<Component> = target.components().collect();
    for (i, component) in components.iter().enumerate() {
        match component {
            Component::Normal(name) => {
                current.push(name);
                if i + 1 < components.len() && symlinks.contains(&current) {
                    return Err(LinkProblem::ThroughSymlink);
                }
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if !current.pop() {
                    return Err(LinkProblem::Escapes);
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(LinkProblem::Escapes),
        }
    }
    Ok(())
}
