//! `flowplane`: parses the command line (flags over `FLOWPLANE_*` environment), runs the
//! command and maps failure to a non-zero exit with a one-line message on stderr.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = flowplane_cli::Cli::parse();
    let mut stdout = std::io::stdout();
    match flowplane_cli::run(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowplane: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
