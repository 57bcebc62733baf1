//! `bsm plugins check`: tells a plugin author precisely why a file is not a
//! BSM plugin, before any host tries to load it.

use serde::Serialize;
use wasmtime::component::Component;

use crate::bindings::{agent::AgentPre, handler::ActionHandlerPre, step::StepPre};
use crate::manifest::PluginKind;
use crate::runtime::Runtime;

/// What a valid plugin component is.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub world: PluginKind,
    pub digest: String,
    pub bytes: usize,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Validates a component against the host: it must compile, import only
/// what the host provides, and export the agent or the step world.
pub fn check_component(runtime: &Runtime, bytes: &[u8]) -> Result<CheckReport, String> {
    crate::header::check_header(bytes)?;
    let engine = runtime.engine();
    let component =
        Component::new(engine, bytes).map_err(|e| format!("not a valid component: {e:#}"))?;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let pre = runtime.linker().instantiate_pre(&component).map_err(|e| {
        format!(
            "the component imports something this host does not provide: {e:#} (imports: {})",
            imports.join(", ")
        )
    })?;
    let world = match (
        AgentPre::new(pre.clone()),
        StepPre::new(pre.clone()),
        ActionHandlerPre::new(pre),
    ) {
        (Ok(_), _, _) => PluginKind::Agent,
        (_, Ok(_), _) => PluginKind::Step,
        (_, _, Ok(_)) => PluginKind::Handler,
        (Err(agent), Err(step), Err(handler)) => {
            return Err(format!(
                "the component exports no BSM world: as an agent: {agent:#}; as a step: {step:#}; \
                 as an action handler: {handler:#} (it exports: {}). A plugin exports `describe` \
                 and `run` of bsm:plugin/agent@0.1.0 or bsm:plugin/step@0.1.0, or `describe` and \
                 `handle` of bsm:plugin/action-handler@0.1.0; with bsm-sdk use `export_agent!`, \
                 `export_step!` or `export_handler!`",
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            ));
        }
    };
    Ok(CheckReport {
        world,
        digest: crate::artifact_cache::digest(bytes),
        bytes: bytes.len(),
        imports,
        exports,
    })
}
