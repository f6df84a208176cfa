//! plan() over 500 modules: desired vs observed with a mix of changes (updates, stops,
//! removals, back-off restarts, new modules) and the converged case.

use criterion::{Criterion, criterion_group, criterion_main};
use edge_agent::{ModuleState, RuntimeStatus, plan};
use edge_core::ModuleId;
use edge_manifest::{
    Deployment, DesiredStatus, ModuleKind, ModuleSpec, ProcessSettings, RestartPolicy,
    StoreAndForward,
};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

const MODULES: u32 = 500;

fn spec(i: u32) -> ModuleSpec {
    let mut env = BTreeMap::new();
    env.insert("RUST_LOG".to_owned(), "info".to_owned());
    env.insert("INDEX".to_owned(), i.to_string());
    ModuleSpec {
        id: ModuleId::new(format!("module-{i:04}")).unwrap_or_else(|e| panic!("{e}")),
        version: "1.0".into(),
        kind: ModuleKind::Process(ProcessSettings {
            path: format!("bin/module-{i}").into(),
            args: vec!["--config".into(), "config.json".into()],
            working_dir: None,
        }),
        status: DesiredStatus::Running,
        restart_policy: RestartPolicy::OnUnhealthy,
        startup_order: i % 7,
        env,
    }
}

fn deployment(specs: Vec<ModuleSpec>) -> Deployment {
    Deployment {
        schema_version: "1.1".into(),
        modules: specs.into_iter().map(|s| (s.id.clone(), s)).collect(),
        routes: vec![],
        store_and_forward: StoreAndForward {
            time_to_live: Duration::from_secs(7200),
            max_size_bytes: None,
        },
        twins: BTreeMap::new(),
        hash: "bench".into(),
    }
}

/// Desired: modules 0..500 with every 10th on a new version, every 17th stopped, every 23rd
/// new (not observed). Observed: the old specs, every 13th in back-off (due), every 29th failed,
/// plus 25 modules that are no longer desired.
fn mixed() -> (Deployment, Vec<ModuleState>) {
    let mut desired = Vec::new();
    let mut observed = Vec::new();
    for i in 0..MODULES {
        let old = spec(i);
        let mut new = old.clone();
        if i % 10 == 0 {
            new.version = "2.0".into();
        }
        if i % 17 == 0 {
            new.status = DesiredStatus::Stopped;
        }
        desired.push(new);
        if i % 23 == 0 {
            continue;
        }
        let status = if i % 13 == 0 {
            RuntimeStatus::Backoff
        } else if i % 29 == 0 {
            RuntimeStatus::Failed
        } else {
            RuntimeStatus::Running
        };
        observed.push(ModuleState {
            id: old.id.clone(),
            applied: Some(old),
            status,
            restart_due: status == RuntimeStatus::Backoff,
        });
    }
    for i in MODULES..MODULES + 25 {
        let old = spec(i);
        observed.push(ModuleState {
            id: old.id.clone(),
            applied: Some(old),
            status: RuntimeStatus::Running,
            restart_due: false,
        });
    }
    (deployment(desired), observed)
}

fn converged() -> (Deployment, Vec<ModuleState>) {
    let specs: Vec<ModuleSpec> = (0..MODULES).map(spec).collect();
    let observed = specs
        .iter()
        .map(|s| ModuleState {
            id: s.id.clone(),
            applied: Some(s.clone()),
            status: RuntimeStatus::Running,
            restart_due: false,
        })
        .collect();
    (deployment(specs), observed)
}

fn bench(c: &mut Criterion) {
    let (d, o) = mixed();
    let actions = plan(&d, &o);
    assert!(
        actions.len() > 100,
        "the mix should need work: {}",
        actions.len()
    );
    c.bench_function("plan_500_mixed", |b| {
        b.iter(|| plan(black_box(&d), black_box(&o)))
    });
    let (d, o) = converged();
    assert!(plan(&d, &o).is_empty());
    c.bench_function("plan_500_converged", |b| {
        b.iter(|| plan(black_box(&d), black_box(&o)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
