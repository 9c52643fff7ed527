//! Why an action missed the cache: what differs between it and an earlier one. Arguments,
//! environment and platform are compared entry by entry, input files by path over both
//! trees, so the answer names the one flag or file that changed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ActionView, Input};

/// One named value that differs; `None` on a side where it is absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Everything that differs between two actions; empty when they are the same action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ActionDiff {
    /// By position: `name` is the argument's index.
    pub arguments: Vec<Change>,
    pub environment: Vec<Change>,
    pub platform: Vec<Change>,
    /// The working directory, the timeout, do_not_cache and the output paths.
    pub settings: Vec<Change>,
    pub inputs_added: Vec<String>,
    pub inputs_removed: Vec<String>,
    /// Paths present in both whose content, mode or link target differ.
    pub inputs_changed: Vec<Change>,
    /// Parts a side could not be compared on, because its store lacks them.
    pub incomplete: Vec<String>,
}

impl ActionDiff {
    pub fn is_empty(&self) -> bool {
        self.arguments.is_empty()
            && self.environment.is_empty()
            && self.platform.is_empty()
            && self.settings.is_empty()
            && self.inputs_added.is_empty()
            && self.inputs_removed.is_empty()
            && self.inputs_changed.is_empty()
    }

    /// The diff as text, a line per difference, for the CLI.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        for (section, changes) in [
            ("argument", &self.arguments),
            ("env", &self.environment),
            ("platform", &self.platform),
            ("setting", &self.settings),
            ("input changed", &self.inputs_changed),
        ] {
            for c in changes {
                out += &format!(
                    "{section} {}: {} -> {}\n",
                    c.name,
                    show(&c.before),
                    show(&c.after)
                );
            }
        }
        for p in &self.inputs_added {
            out += &format!("input added: {p}\n");
        }
        for p in &self.inputs_removed {
            out += &format!("input removed: {p}\n");
        }
        for p in &self.incomplete {
            out += &format!("not compared: {p}\n");
        }
        if self.is_empty() {
            out += "no difference\n";
        }
        out
    }
}

/// What changed from `before` to `after`.
pub fn diff(before: &ActionView, after: &ActionView) -> ActionDiff {
    let mut d = ActionDiff {
        arguments: by_index(before.arguments(), after.arguments()),
        environment: by_name(&before.environment(), &after.environment()),
        platform: by_name(&before.platform(), &after.platform()),
        settings: by_name(&settings(before), &settings(after)),
        ..Default::default()
    };
    for (side, view) in [("first", before), ("second", after)] {
        if view.command.is_none() {
            d.incomplete.push(format!("the {side} action's command"));
        }
        if view.tree_cut_short() {
            d.incomplete.push(format!(
                "the {side} action's inputs beyond {} directories",
                super::MAX_DIRECTORIES
            ));
        }
    }
    let (old, new) = (before.inputs(), after.inputs());
    for (path, input) in &new {
        match old.get(path) {
            None => d.inputs_added.push(path.clone()),
            Some(was) if was != input => d.inputs_changed.push(Change {
                name: path.clone(),
                before: Some(describe(was)),
                after: Some(describe(input)),
            }),
            Some(_) => {}
        }
    }
    d.inputs_removed = old
        .keys()
        .filter(|p| !new.contains_key(*p))
        .cloned()
        .collect();
    if d.is_empty() && before.digest != after.digest {
        // Same in every field compared, yet different actions: say so, never "no difference".
        d.settings.push(Change {
            name: "fields not compared (node properties, empty directories, encoding)".into(),
            before: Some(before.digest.to_string()),
            after: Some(after.digest.to_string()),
        });
    }
    for (side, inputs) in [("first", &old), ("second", &new)] {
        for (path, input) in inputs.iter() {
            if let Input::MissingDirectory { digest } = input {
                d.incomplete.push(format!(
                    "the {side} action's directory {path:?} ({digest}) is not in the CAS"
                ));
            }
        }
    }
    d
}

fn describe(input: &Input) -> String {
    match input {
        Input::File {
            digest,
            executable: true,
        } => format!("{digest} (executable)"),
        Input::File { digest, .. } => digest.to_string(),
        Input::Symlink { target } => format!("symlink to {target}"),
        Input::MissingDirectory { digest } => format!("directory {digest} (not in the CAS)"),
    }
}

fn settings(view: &ActionView) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    if let Some(c) = &view.command {
        s.insert("working_directory".into(), c.working_directory.clone());
    }
    let timeout = view.action.timeout.as_ref().map_or(0, |t| t.seconds);
    s.insert("timeout_secs".into(), timeout.to_string());
    s.insert("do_not_cache".into(), view.action.do_not_cache.to_string());
    s.insert("salt".into(), hex::encode(&view.action.salt));
    s.insert("output_paths".into(), view.output_paths().join(" "));
    s
}

fn by_name(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<Change> {
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .map(|n| Change {
            name: n.clone(),
            before: before.get(n).cloned(),
            after: after.get(n).cloned(),
        })
        .collect()
}

fn by_index(before: &[String], after: &[String]) -> Vec<Change> {
    (0..before.len().max(after.len()))
        .filter(|i| before.get(*i) != after.get(*i))
        .map(|i| Change {
            name: i.to_string(),
            before: before.get(i).cloned(),
            after: after.get(i).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Digest, DigestFunction};
    use crate::proto::remote_execution::{Action, Command, Directory, FileNode, command};
    use std::collections::HashMap;

    fn view(env_value: &str, file: &[u8], extra: Option<&str>) -> ActionView {
        let f = DigestFunction::Sha256;
        let mut dir = Directory {
            files: vec![FileNode {
                name: "input.txt".into(),
                digest: Some(Digest::of(f, file).to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        if let Some(name) = extra {
            dir.files.push(FileNode {
                name: name.into(),
                digest: Some(Digest::empty(f).to_proto()),
                ..Default::default()
            });
        }
        let root = Digest::of(f, &prost::Message::encode_to_vec(&dir));
        let command = Command {
            arguments: vec!["sh".into(), "-c".into(), "cat input.txt".into()],
            environment_variables: vec![command::EnvironmentVariable {
                name: "MODE".into(),
                value: env_value.into(),
            }],
            ..Default::default()
        };
        ActionView {
            digest: Digest::of(f, env_value.as_bytes()),
            action: Action::default(),
            command: Some(command),
            input_root: Some(root),
            directories: HashMap::from([(root, dir)]),
        }
    }

    #[test]
    fn names_the_changed_variable_and_file() {
        let d = diff(
            &view("fast", b"one", Some("gone")),
            &view("slow", b"two", None),
        );
        assert_eq!(d.environment.len(), 1);
        assert_eq!(d.environment[0].name, "MODE");
        assert_eq!(d.environment[0].after.as_deref(), Some("slow"));
        assert_eq!(d.inputs_changed.len(), 1);
        assert_eq!(d.inputs_changed[0].name, "input.txt");
        assert_eq!(d.inputs_removed, vec!["gone".to_string()]);
        assert!(d.arguments.is_empty() && d.platform.is_empty() && d.inputs_added.is_empty());
        assert!(d.to_text().contains("env MODE: fast -> slow"));
    }

    #[test]
    fn different_actions_never_show_no_difference() {
        let (a, mut b) = (view("x", b"one", None), view("x", b"one", None));
        b.digest = Digest::of(DigestFunction::Sha256, b"another action");
        let d = diff(&a, &b);
        assert!(!d.is_empty());
        assert!(
            d.to_text().contains("fields not compared"),
            "{}",
            d.to_text()
        );
    }

    #[test]
    fn the_same_action_has_no_difference() {
        let d = diff(&view("x", b"one", None), &view("x", b"one", None));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.to_text(), "no difference\n");
    }
}
