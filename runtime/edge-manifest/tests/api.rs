//! The public API: parsed values and defaults, notices, status codes, binary lookup.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use edge_core::ModuleId;
use edge_manifest::{
    DEFAULT_STORE_TTL, DeploymentCode, DesiredStatus, ModuleKind, RestartPolicy, check_binaries,
    parse, parse_file, resolve_binary,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn id(s: &str) -> ModuleId {
    ModuleId::new(s).unwrap()
}

fn notices(name: &str) -> Vec<String> {
    let (_, notices) = parse_file(&fixture(name)).unwrap();
    notices
        .into_iter()
        .map(|n| format!("{}: {}", n.pointer, n.message))
        .collect()
}

#[test]
fn pipeline_values_and_defaults() {
    let path = fixture("valid/pipeline.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let (d, notices) = parse(&text, "pipeline.json").unwrap();
    assert!(notices.is_empty(), "{notices:?}");
    assert_eq!(d.schema_version, "1.1");
    assert_eq!(d.hash, format!("{:x}", Sha256::digest(text.as_bytes())));
    assert_eq!(d.hash.len(), 64);

    let publisher = &d.modules[&id("opcua-publisher")];
    assert_eq!(publisher.version, "1.0");
    assert_eq!(publisher.restart_policy, RestartPolicy::Always);
    assert_eq!(publisher.startup_order, 1);
    assert_eq!(publisher.env["RUST_LOG"], "info");
    let ModuleKind::Process(s) = &publisher.kind else {
        panic!("not a process: {:?}", publisher.kind)
    };
    assert_eq!(s.path, PathBuf::from("./bin/opcua-publisher"));
    assert_eq!(
        s.args,
        ["--endpoint", "opc.tcp://plc.local:4840", "--interval", "1s"]
    );
    assert_eq!(s.working_dir, None);

    let fx = &d.modules[&id("feature-extractor")];
    let ModuleKind::Process(s) = &fx.kind else {
        panic!("not a process")
    };
    assert_eq!(
        s.working_dir,
        Some(PathBuf::from("/var/lib/edged/feature-extractor"))
    );
    assert_eq!(fx.status, DesiredStatus::Running);

    let alert = &d.modules[&id("alert-router")];
    assert_eq!(alert.status, DesiredStatus::Stopped);
    assert_eq!(alert.restart_policy, RestartPolicy::Never);
    assert_eq!(alert.startup_order, u32::MAX);

    let order: Vec<&str> = d.start_order().iter().map(|m| m.as_str()).collect();
    assert_eq!(
        order,
        [
            "opcua-publisher",
            "feature-extractor",
            "onnx-scoring",
            "alert-router"
        ]
    );

    let names: Vec<&str> = d.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "anomaliesToAlerts",
            "featuresToScoring",
            "scoresUpstream",
            "telemetryToFeatures"
        ]
    );
    assert!(
        d.routes
            .iter()
            .all(|r| r.priority == 0 && r.time_to_live.is_none())
    );
    assert_eq!(
        d.routes[2].text,
        "FROM /messages/modules/onnx-scoring/outputs/* INTO $upstream"
    );

    assert_eq!(d.store_and_forward.time_to_live, Duration::from_secs(86400));
    assert_eq!(d.store_and_forward.max_size_bytes, Some(1_073_741_824));

    // Every module has a twin; the ones the manifest leaves out are empty.
    assert_eq!(d.twins.len(), 4);
    assert_eq!(d.twins[&id("onnx-scoring")]["window"]["hop"], 16);
    assert_eq!(d.twins[&id("alert-router")], serde_json::json!({}));
}

#[test]
fn minimal_deployment_gets_azure_defaults() {
    let (d, notices) = parse_file(&fixture("valid/minimal.json")).unwrap();
    assert!(notices.is_empty());
    let m = &d.modules[&id("echo")];
    assert_eq!(m.status, DesiredStatus::Running);
    assert_eq!(m.restart_policy, RestartPolicy::OnUnhealthy);
    assert_eq!(m.startup_order, u32::MAX);
    assert!(m.env.is_empty());
    assert!(d.routes.is_empty());
    assert_eq!(d.store_and_forward.time_to_live, DEFAULT_STORE_TTL);
    assert_eq!(DEFAULT_STORE_TTL, Duration::from_secs(7200));
    assert_eq!(d.store_and_forward.max_size_bytes, None);
}

#[test]
fn route_objects_keep_priority_and_ttl() {
    let (d, _) = parse_file(&fixture("valid/routes-objects.json")).unwrap();
    let r: Vec<(&str, u8, Option<Duration>)> = d
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.priority, r.time_to_live))
        .collect();
    assert_eq!(
        r,
        [
            ("bulk", 9, None),
            ("local", 0, None),
            ("plain", 0, None),
            ("urgent", 0, Some(Duration::from_secs(60))),
        ]
    );
}

#[test]
fn azure_docker_manifest_is_kept_with_notices() {
    let (d, _) = parse_file(&fixture("valid/azure-docker.json")).unwrap();
    assert_eq!(d.modules.len(), 2);
    for m in d.modules.values() {
        assert_eq!(
            m.kind,
            ModuleKind::Unsupported {
                kind: "docker".into()
            }
        );
    }
    assert_eq!(
        d.modules[&id("filtermodule")].restart_policy,
        RestartPolicy::OnFailure
    );
    assert_eq!(d.routes[0].name, "filterToIoTHub");
    assert_eq!(d.routes[0].time_to_live, Some(Duration::from_secs(86400)));
    assert_eq!(d.twins[&id("filtermodule")]["TemperatureThreshold"], 25);
    let a = "/modulesContent/$edgeAgent/properties.desired";
    let m = format!("{a}/modules");
    assert_eq!(
        notices("valid/azure-docker.json"),
        [
            format!("{a}/runtime: `runtime` is ignored: it configures the docker runtime, which this runtime does not use"),
            format!("{a}/systemModules: `systemModules` is ignored: edgeAgent and edgeHub are built into edged"),
            format!("{m}/SimulatedTemperatureSensor/type: module `SimulatedTemperatureSensor` has type `docker`, which this runtime cannot run; it is reported as unsupported"),
            format!("{m}/SimulatedTemperatureSensor/imagePullPolicy: `imagePullPolicy` is ignored: this runtime runs processes, not images"),
            format!("{m}/filtermodule/type: module `filtermodule` has type `docker`, which this runtime cannot run; it is reported as unsupported"),
            "/modulesContent/$edgeHub/properties.desired/mqttBroker: `mqttBroker` is ignored: edged's broker is configured in edged's own config".to_owned(),
        ]
    );
}

#[test]
fn az_deployment_wrapper_and_twin_metadata_are_accepted() {
    let (d, notices) = parse_file(&fixture("valid/az-deployment-content.json")).unwrap();
    assert!(notices.is_empty(), "{notices:?}");
    assert_eq!(d.schema_version, "1.0");
    assert_eq!(d.routes[0].text, "FROM /* INTO $upstream");
}

#[test]
fn process_settings_image_is_a_notice() {
    let text = r#"{"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {
            "m": {"version": "1", "type": "process", "imagePullPolicy": "never",
                  "settings": {"path": "m", "image": "x", "createOptions": "{}"}}}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1"}}}}"#;
    let (_, notices) = parse(text, "t").unwrap();
    let got: Vec<&str> = notices.iter().map(|n| n.pointer.as_str()).collect();
    let m = "/modulesContent/$edgeAgent/properties.desired/modules/m";
    assert_eq!(
        got,
        [
            format!("{m}/imagePullPolicy"),
            format!("{m}/settings/image"),
            format!("{m}/settings/createOptions"),
        ]
    );
}

#[test]
fn shared_startup_order_is_a_notice_not_a_problem() {
    let text = r#"{"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {
            "c": {"version": "1", "type": "process", "startupOrder": 2, "settings": {"path": "c"}},
            "b": {"version": "1", "type": "process", "startupOrder": 2, "settings": {"path": "b"}},
            "a": {"version": "1", "type": "process", "startupOrder": 2, "settings": {"path": "a"}},
            "d": {"version": "1", "type": "process", "startupOrder": 1, "settings": {"path": "d"}},
            "e": {"version": "1", "type": "process", "settings": {"path": "e"}},
            "f": {"version": "1", "type": "process", "settings": {"path": "f"}}}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1"}}}}"#;
    let (d, notices) = parse(text, "t").unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        notices[0].pointer,
        "/modulesContent/$edgeAgent/properties.desired/modules/a/startupOrder"
    );
    assert_eq!(
        notices[0].message,
        "modules a, b and c share startupOrder 2; they start in name order"
    );
    let order: Vec<&str> = d.start_order().iter().map(|m| m.as_str()).collect();
    assert_eq!(order, ["d", "a", "b", "c", "e", "f"]);
}

#[test]
fn status_codes_follow_azure() {
    let code = |text: &str| parse(text, "t").unwrap_err().status_code();
    assert_eq!(code(""), 417);
    assert_eq!(code("  \n"), 417);
    assert_eq!(code("{}"), 417);
    assert_eq!(code(r#"{"modulesContent": {}}"#), 417);
    assert_eq!(code(r#"{"modulesContent": {"$edgeAgent": {}}}"#), 417);
    assert_eq!(code("{"), 400);
    assert_eq!(code("[]"), 400);
    let agent = |schema: &str, module: &str| {
        format!(
            r#"{{"modulesContent": {{
            "$edgeAgent": {{"properties.desired": {{"schemaVersion": {schema}, "modules": {{"m": {module}}}}}}},
            "$edgeHub": {{"properties.desired": {{"schemaVersion": "1.3"}}}}}}}}"#
        )
    };
    let good = r#"{"version": "1", "type": "process", "settings": {"path": "m"}}"#;
    let bad = r#"{"version": "1", "type": "process"}"#;
    assert!(parse(&agent("\"1.1\"", good), "t").is_ok());
    assert!(parse(&agent("\"1.0.0\"", good), "t").is_ok());
    assert_eq!(code(&agent("\"1.2\"", good)), 412);
    assert_eq!(code(&agent("\"one\"", good)), 412);
    assert_eq!(code(&agent("1", good)), 412);
    assert_eq!(code(&agent("\"1.1\"", bad)), 400);
    // A bad schema version outranks other format problems, and all are still listed.
    let e = parse(&agent("\"2.0\"", bad), "t").unwrap_err();
    assert_eq!(e.code, DeploymentCode::InvalidSchemaVersion);
    assert_eq!(e.code.as_str(), "InvalidSchemaVersion");
    assert_eq!(e.problems.len(), 2);
    assert_eq!(e.to_string(), "2 problem(s) in t");
}

#[test]
fn unreadable_file_is_one_problem() {
    let dir = tempfile::tempdir().unwrap();
    let e = parse_file(&dir.path().join("missing.json")).unwrap_err();
    assert_eq!(e.status_code(), 400);
    assert_eq!(e.problems.len(), 1);
    assert!(
        e.problems[0]
            .message
            .starts_with("cannot read the manifest: ")
    );
}

#[cfg(unix)]
mod binaries {
    use super::*;
    use edge_manifest::ProcessSettings;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn settings(path: &str) -> ProcessSettings {
        ProcessSettings {
            path: path.into(),
            args: vec![],
            working_dir: None,
        }
    }

    #[test]
    fn resolve_binary_by_kind_of_path() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let (p1, p2, manifest_dir) = (root.join("p1"), root.join("p2"), root.join("deploy"));
        write(&p1.join("plain"), 0o644);
        write(&p2.join("plain"), 0o755);
        write(&p2.join("tool"), 0o755);
        write(&p1.join("tool"), 0o755);
        write(&manifest_dir.join("bin/local"), 0o700);
        std::fs::create_dir_all(p1.join("dir")).unwrap();
        let path = [p1.clone(), p2.clone()];

        // Bare names: the first directory with an executable file wins.
        assert_eq!(
            resolve_binary(&settings("tool"), &manifest_dir, &path),
            Some(p1.join("tool"))
        );
        assert_eq!(
            resolve_binary(&settings("plain"), &manifest_dir, &path),
            Some(p2.join("plain"))
        );
        assert_eq!(resolve_binary(&settings("dir"), &manifest_dir, &path), None);
        assert_eq!(resolve_binary(&settings("tool"), &manifest_dir, &[]), None);
        // A bare name is never looked up next to the manifest.
        assert_eq!(
            resolve_binary(&settings("local"), &manifest_dir.join("bin"), &[]),
            None
        );
        // With a `/`: relative to the manifest, or absolute.
        assert_eq!(
            resolve_binary(&settings("bin/local"), &manifest_dir, &path),
            Some(manifest_dir.join("bin/local"))
        );
        assert_eq!(
            resolve_binary(&settings("./bin/local"), &manifest_dir, &path),
            Some(manifest_dir.join("./bin/local"))
        );
        let abs = p2.join("tool");
        assert_eq!(
            resolve_binary(&settings(abs.to_str().unwrap()), Path::new("/nowhere"), &[]),
            Some(abs)
        );
        let abs_plain = p1.join("plain");
        assert_eq!(
            resolve_binary(&settings(abs_plain.to_str().unwrap()), &manifest_dir, &path),
            None
        );
    }

    #[test]
    fn check_binaries_reports_each_missing_binary() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let bin = root.join("bin");
        write(&bin.join("ok"), 0o755);
        write(&bin.join("noexec"), 0o644);
        std::fs::create_dir_all(root.join("adir")).unwrap();
        let abs_noexec = bin.join("noexec");
        let text = format!(
            r#"{{"modulesContent": {{
            "$edgeAgent": {{"properties.desired": {{"schemaVersion": "1.1", "modules": {{
                "a-ok": {{"version": "1", "type": "process", "settings": {{"path": "ok"}}}},
                "b-missing": {{"version": "1", "type": "process", "settings": {{"path": "missing"}}}},
                "c-noexec": {{"version": "1", "type": "process", "settings": {{"path": "bin/noexec"}}}},
                "d-dir": {{"version": "1", "type": "process", "settings": {{"path": "./adir"}}}},
                "e-abs": {{"version": "1", "type": "process", "settings": {{"path": "{}"}}}},
                "f-gone": {{"version": "1", "type": "process", "settings": {{"path": "bin/gone"}}}},
                "g-docker": {{"version": "1", "type": "docker", "settings": {{"image": "x"}}}}}}}}}},
            "$edgeHub": {{"properties.desired": {{"schemaVersion": "1.1"}}}}}}}}"#,
            abs_noexec.display()
        );
        let (d, _) = parse(&text, "t").unwrap();
        let problems: Vec<String> = check_binaries(&d, root, std::slice::from_ref(&bin))
            .iter()
            .map(ToString::to_string)
            .collect();
        let m = "/modulesContent/$edgeAgent/properties.desired/modules";
        let r = root.display();
        assert_eq!(
            problems,
            [
                format!(
                    "{m}/b-missing/settings/path: no executable file `missing` in the module path ({})",
                    bin.display()
                ),
                format!("{m}/c-noexec/settings/path: `{r}/bin/noexec` is not executable"),
                format!("{m}/d-dir/settings/path: `{r}/./adir` is not a file"),
                format!(
                    "{m}/e-abs/settings/path: `{}` is not executable",
                    abs_noexec.display()
                ),
                format!(
                    "{m}/f-gone/settings/path: `{r}/bin/gone` cannot be used: No such file or directory (os error 2)"
                ),
            ]
        );
        let none = check_binaries(&d, root, &[]);
        assert_eq!(
            none[0].message,
            "`ok` is a bare name but the module path is empty"
        );
    }
}

#[test]
fn byte_order_mark_is_skipped_but_hashed() {
    let plain = std::fs::read_to_string(fixture("valid/minimal.json")).unwrap();
    let with_bom = format!("\u{feff}{plain}");
    let (a, _) = parse(&plain, "t").unwrap();
    let (b, _) = parse(&with_bom, "t").unwrap();
    assert_eq!(a.modules, b.modules);
    assert_ne!(a.hash, b.hash);
    let e = parse("\u{feff}{\"modulesContent\": 1}", "t").unwrap_err();
    assert_eq!(
        e.problems[0].to_string(),
        "1:20: /modulesContent: `modulesContent` must be an object, not 1"
    );
}

#[test]
fn problem_display_drops_unknown_parts() {
    use edge_manifest::Problem;
    let p = |pointer: &str, position| Problem {
        pointer: pointer.into(),
        position,
        message: "m".into(),
    };
    assert_eq!(p("/a", Some((2, 3))).to_string(), "2:3: /a: m");
    assert_eq!(p("/a", None).to_string(), "/a: m");
    assert_eq!(p("", Some((1, 1))).to_string(), "1:1: m");
    assert_eq!(p("", None).to_string(), "m");
}
