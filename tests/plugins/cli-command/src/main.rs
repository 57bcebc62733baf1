//! A plain WASI command: a valid component, but of the wrong world for BSM.

fn main() {
    println!("I am a command, not a BSM plugin");
}
