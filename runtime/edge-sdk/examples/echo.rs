//! The smallest useful module: forwards every message from input `in` to output `out`, tagging
//! it with a property from its twin, and answers a `ping` method.
//!
//! Desired properties: `{"tag": "echo"}`.

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
        let mut input = ctx.input("in");
        while let Some(d) = ctx.next(&mut input).await {
            let mut out = d.message.clone();
            out.set_property("tag", ctx.config().tag.clone());
            ctx.send("out", out).await?;
            d.ack().await?;
        }
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    edge_sdk::run(Echo)
}
