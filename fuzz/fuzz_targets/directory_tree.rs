//! The input-tree checks of `rexd::execution::spec` on arbitrary Directory messages.
//!
//! Input: one mode byte, eight bytes of symlink depth (little-endian), then either protobuf
//! bytes decoded with prost (even mode) or bytes that `arbitrary` builds a Directory from
//! (odd mode; the names are then sorted when asked, so the accepting path is reached too).
//! Nothing may panic, and each check must agree with a plain model of what it promises:
//! - `validate_directory_for_fuzzing`: every list strictly sorted, every name a single
//!   component, no name twice across the lists;
//! - `check_symlink_target`: a non-empty relative target whose walk from `depth` never goes
//!   above the root; for small depths the same answer as `resolve_relative`;
//! - `resolve_relative`: a result never starts with `/` and has no `..`, `.` or empty component.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use rexd::execution::spec::{
    check_symlink_target, resolve_relative, validate_directory_for_fuzzing,
};
use rexd::proto::remote_execution::{Directory, DirectoryNode, FileNode, SymlinkNode};

#[derive(Arbitrary, Debug)]
struct Built {
    files: Vec<String>,
    directories: Vec<String>,
    symlinks: Vec<(String, String)>,
    /// Sort and deduplicate each list.
    sorted: bool,
}

impl Built {
    fn into_directory(mut self) -> Directory {
        if self.sorted {
            for names in [&mut self.files, &mut self.directories] {
                names.sort();
                names.dedup();
            }
            self.symlinks.sort();
            self.symlinks.dedup_by(|a, b| a.0 == b.0);
        }
        Directory {
            files: self
                .files
                .into_iter()
                .map(|name| FileNode {
                    name,
                    ..Default::default()
                })
                .collect(),
            directories: self
                .directories
                .into_iter()
                .map(|name| DirectoryNode {
                    name,
                    ..Default::default()
                })
                .collect(),
            symlinks: self
                .symlinks
                .into_iter()
                .map(|(name, target)| SymlinkNode {
                    name,
                    target,
                    ..Default::default()
                })
                .collect(),
            node_properties: None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((depth, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let depth = u64::from_le_bytes(*depth) as usize;
    let dir = if mode % 2 == 0 {
        match Directory::decode(rest) {
            Ok(dir) => dir,
            Err(_) => return,
        }
    } else {
        match Built::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(built) => built.into_directory(),
            Err(_) => return,
        }
    };

    check_directory(&dir);
    for link in &dir.symlinks {
        check_symlink(&link.name, &link.target, depth);
        check_symlink(&link.name, &link.target, depth % 16);
        check_resolve(&link.name, &link.target);
    }
    for (a, b) in dir.files.iter().zip(&dir.directories) {
        check_resolve(&a.name, &b.name);
    }
});

fn check_directory(dir: &Directory) {
    let lists: [Vec<&str>; 3] = [
        dir.files.iter().map(|f| f.name.as_str()).collect(),
        dir.directories.iter().map(|d| d.name.as_str()).collect(),
        dir.symlinks.iter().map(|s| s.name.as_str()).collect(),
    ];
    let sorted = lists.iter().all(|l| l.windows(2).all(|p| p[0] < p[1]));
    let names_ok = lists
        .iter()
        .flatten()
        .all(|n| !n.is_empty() && *n != "." && *n != ".." && !n.contains('/') && !n.contains('\0'));
    let mut all: Vec<&str> = lists.iter().flatten().copied().collect();
    all.sort_unstable();
    let unique = all.windows(2).all(|p| p[0] != p[1]);
    let expected = sorted && names_ok && unique;
    match validate_directory_for_fuzzing(dir) {
        Ok(()) => assert!(expected, "accepted {dir:?}"),
        Err(err) => {
            assert!(!expected, "rejected {dir:?}: {err}");
            assert!(matches!(err, rexd::Error::BadInput(_)), "{err:?}");
        }
    }
}

fn check_symlink(name: &str, target: &str, depth: usize) {
    // The model walks with unbounded integers: no depth a tree could have is out of range.
    let mut level = depth as i128;
    let mut stays_inside = true;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => level -= 1,
            _ => level += 1,
        }
        stays_inside &= level >= 0;
    }
    let expected = !target.is_empty() && !target.starts_with('/') && stays_inside;
    let got = check_symlink_target(name, target, depth);
    assert_eq!(
        got.is_ok(),
        expected,
        "{name:?} -> {target:?} at depth {depth}: {got:?}"
    );

    // The same question asked of resolve_relative, from a directory `depth` levels down.
    if depth <= 64 && !target.is_empty() && !target.starts_with('/') {
        let base = vec!["d"; depth].join("/");
        let resolved = resolve_relative(&base, target);
        assert_eq!(
            resolved.is_some(),
            expected,
            "{base:?} + {target:?}: {resolved:?}"
        );
    }
}

fn check_resolve(base: &str, path: &str) {
    let Some(out) = resolve_relative(base, path) else {
        return;
    };
    assert!(!out.starts_with('/'), "{base:?} + {path:?} = {out:?}");
    if !out.is_empty() {
        assert!(
            out.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{base:?} + {path:?} = {out:?}"
        );
    }
    // Resolving is idempotent: the result is already in normal form.
    assert_eq!(resolve_relative("", &out).as_deref(), Some(out.as_str()));
}
