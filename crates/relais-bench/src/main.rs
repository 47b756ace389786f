//! `cargo run --release -p relais-bench -- [options]`: the load tool on its
//! own (the same as `relais bench [options]`).

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "relais-bench",
    about = "Load tool: full sign-ins against a real Relais"
)]
struct Cli {
    #[command(flatten)]
    args: relais_bench::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // As in `relais serve`: freed argon2 blocks go back to the system.
    relais::crypto::gate::return_freed_memory_to_the_system();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(relais_bench::main_with(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
