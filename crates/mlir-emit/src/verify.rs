//! MLIR's own parser and verifier run on the emitted text (feature `mlir-verify`, which
//! links the system's MLIR 22 through melior). Unregistered dialects (FHE, FHELinalg)
//! are allowed; `func`, `arith` and `tensor` ops are fully verified.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use melior::dialect::DialectRegistry;
use melior::ir::operation::OperationLike;
use melior::ir::Module;
use melior::utility::register_all_dialects;
use melior::Context;

/// What MLIR said about a module it refused.
#[derive(Debug, Clone, PartialEq)]
pub struct MlirError(pub String);

impl fmt::Display for MlirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MlirError {}

/// Parses and verifies `text`; returns the module as MLIR prints it back.
pub fn verify_with_mlir(text: &str) -> Result<String, MlirError> {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    context.set_allow_unregistered_dialects(true);
    let messages = Rc::new(RefCell::new(Vec::<String>::new()));
    let sink = messages.clone();
    let handler = context.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(d.to_string());
        true
    });
    let result = match Module::parse(&context, text) {
        None => Err("the module does not parse"),
        Some(module) if !module.as_operation().verify() => Err("the module does not verify"),
        Some(module) => Ok(module.as_operation().to_string()),
    };
    context.detach_diagnostic_handler(handler);
    result.map_err(|what| {
        let said = messages.borrow();
        MlirError(if said.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {}", said.join("; "))
        })
    })
}
