//! The README's quick paths stay true: every command in them is one that this test runs
//! (the `mailhaul` commands: each subcommand and flag must exist, and `mailhaul validate`
//! runs on a sample CSV) or that CI runs (found in .ci/run, scripts/setup.sh or
//! infra/build.sh), or is listed below with why no machine here can run it. A command added
//! to or changed in the README without either fails this test.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mailhaul");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Commands no test or CI run can carry out here, and why.
const NOT_RUN: [(&str, &str); 1] = [("sam deploy --guided", "creates a stack: needs an AWS account")];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The commands of the `sh` blocks under these README headings, comments cut off.
fn quick_path_commands(readme: &str) -> Vec<String> {
    const QUICK_PATHS: [&str; 3] = ["## Two commands", "### Build and deploy", "## Running a batch locally"];
    let mut commands = Vec::new();
    let mut section = "";
    let mut in_sh = false;
    for line in readme.lines() {
        if line.starts_with('#') && !in_sh {
            section = line;
        } else if line.starts_with("```sh") {
            in_sh = true;
        } else if line.starts_with("```") {
            in_sh = false;
        } else if in_sh && QUICK_PATHS.contains(&section) {
            let command = line.split(" #").next().unwrap_or("").trim();
            if !command.is_empty() {
                commands.push(command.to_string());
            }
        }
    }
    commands
}

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").output().expect("run mailhaul");
    assert!(out.status.success(), "mailhaul {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_quick_path_command_is_run_by_a_test_or_ci() {
    let readme = read("README.md");
    let commands = quick_path_commands(&readme);
    assert!(commands.len() >= 10, "the quick paths were not found in README.md: {commands:?}");
    let ci = format!("{}\n{}\n{}", read(".ci/run"), read("scripts/setup.sh"), read("infra/build.sh"));
    let template = read("infra/template.yaml");
    for command in &commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["mailhaul", subcommand, rest @ ..] => {
                // This test runs it: the subcommand and every flag it shows must exist.
                let text = help(&[subcommand]);
                for flag in
                    rest.iter().map(|w| w.trim_matches(|c| c == '[' || c == ']')).filter(|w| w.starts_with("--"))
                {
                    assert!(text.contains(flag), "README: `{command}`: mailhaul {subcommand} has no {flag}:\n{text}");
                }
            }
            ["bash", script] => {
                assert!(
                    ci.contains(&format!("bash {script}")) || *script == ".ci/run",
                    "README: `{command}` is not run by .ci/run"
                );
            }
            ["pip", "install", packages @ ..] => {
                // scripts/setup.sh installs the same packages (into a venv).
                let installs: Vec<&str> = ci.lines().filter(|l| l.contains("pip\" install")).collect();
                for package in packages {
                    assert!(
                        installs.iter().any(|l| l.split_whitespace().any(|w| w == *package)),
                        "README: `{command}`: scripts/setup.sh does not install {package}"
                    );
                }
            }
            ["cargo", "lambda", "build", rest @ ..] => {
                // The functions the template deploys, no more (the CLI is no Lambda).
                let packages: Vec<&str> = rest.windows(2).filter(|w| w[0] == "-p").map(|w| w[1]).collect();
                let binaries: Vec<&str> = template.lines().filter_map(|l| l.trim().strip_prefix("Binary: ")).collect();
                assert_eq!(packages, binaries, "README: `{command}` must build exactly the template's functions");
                assert!(rest.starts_with(&["--release", "--arm64"]), "README: `{command}`");
            }
            _ if NOT_RUN.iter().any(|(c, _)| c == command) => {}
            _ => assert!(
                ci.lines().any(|l| l.contains(command.as_str())),
                "README: `{command}` is run by no test nor by .ci/run, scripts/setup.sh or infra/build.sh: \
                 make CI run it, or fix the README"
            ),
        }
    }
    // The Lambda build command is one of them.
    assert!(commands.iter().any(|c| c.starts_with("cargo lambda build")), "{commands:?}");
}

#[test]
fn mailhaul_help_and_validate_run_as_the_readme_shows() {
    assert!(help(&[]).contains("validate"));
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("batch.csv");
    std::fs::write(&csv, "source_email,source_password,destination_email\nann@old.example,pw,ann@new.example\n")
        .expect("csv");
    let config = dir.path().join("mailhaul.toml");
    std::fs::write(&config, "[source]\nhost = \"imap.old.example\"\n[destination]\nhost = \"imap.new.example\"\nadmin_user = \"admin\"\nmaster_separator = \"*\"\nadmin_password_env = \"MH_README_ADMIN\"\n")
        .expect("config");
    let out = Command::new(BIN)
        .args(["validate", csv.to_str().expect("path"), "--config", config.to_str().expect("path")])
        .env("MH_README_ADMIN", "x")
        .output()
        .expect("run mailhaul");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
