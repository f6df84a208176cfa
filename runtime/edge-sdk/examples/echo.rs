//! The smallest useful module: forwards every message from input `in` to output `out`, tagging
//! it with a property from its twin, and answers a `ping` method.
//!
//! Desired properties: `{"tag": "echo"}`. Metrics (on edged's `/metrics` with
//! `module="echo"`): `edge_module_messages_echoed_total`, `edge_module_body_bytes`.

use edge_sdk::{Module, ModuleConfig, ModuleContext, ModuleError};
use serde_json::json;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tag: String,
}

impl ModuleConfig for Config {
    fn validate(&self) -> Result<(), String> {
        if self.tag.is_empty() {
            return Err("tag: must not be empty".into());
        }
        Ok(())
    }
}

struct Echo;

impl Module for Echo {
    type Config = Config;

    async fn run(self, ctx: ModuleContext<Config>) -> Result<(), ModuleError> {
        ctx.on_method(
            "ping",
            |payload| async move { Ok(json!({"pong": payload})) },
        );
        let echoed = ctx.metrics().counter("messages_echoed_total");
        let sizes = ctx
            .metrics()
            .histogram("body_bytes", &[16.0, 256.0, 4096.0, 65536.0]);
        let mut input = ctx.input("in");
        while let Some(d) = ctx.next(&mut input).await {
            sizes.observe(d.message.body.len() as f64);
            let mut out = d.message.clone();
            out.set_property("tag", ctx.config().tag.clone());
            ctx.send("out", out).await?;
            d.ack().await?;
            echoed.inc();
        }
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    edge_sdk::run(Echo)
}
