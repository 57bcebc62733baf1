//! The first eight bytes of a file say whether it can be a plugin at all:
//! checked before anything is compiled, with the fix in the message.

const MAGIC: &[u8; 4] = b"\0asm";
const COMPONENT_LAYER: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
const CORE_MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// Rejects files that are not WebAssembly components, with the fix.
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(
            "not a WebAssembly file (it does not start with the `\\0asm` magic bytes)".into(),
        );
    }
    let version: [u8; 4] = bytes[4..8].try_into().unwrap();
    if version == CORE_MODULE {
        return Err(
            "a core WebAssembly module, not a component: build the plugin with \
                    `cargo build --target wasm32-wasip2`, which produces a component"
                .into(),
        );
    }
    if version != COMPONENT_LAYER {
        return Err(format!(
            "unsupported WebAssembly version/layer {version:02x?}; expected a component ({COMPONENT_LAYER:02x?})"
        ));
    }
    Ok(())
}
