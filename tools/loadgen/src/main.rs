//! corecast-load entry point: parse flags, run the chosen scenario, print the report.

mod cli;
mod clock;
mod conn;
mod credentials;
mod deflate;
mod frame;
mod handshake;
mod net;
mod plot;
mod report;
mod scenarios;
mod sysstat;
mod tls;
mod transport;

use clap::Parser as _;

fn main() {
    let cli = cli::Cli::parse();
    // Start the clock before any thread so every timestamp shares one base.
    let _ = clock::now_ns();
    match scenarios::run(&cli) {
        Ok(report) => {
            if let Some(path) = &cli.common.plot {
                if let Err(e) = plot::write_svg(path, &report) {
                    eprintln!("plot failed: {e}");
                }
            }
            if cli.common.json {
                report.report.print_json();
            } else {
                report.report.print_human();
            }
            if let Some(why) = report.report.failure() {
                eprintln!("corecast-load: {why}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("corecast-load: {e}");
            std::process::exit(1);
        }
    }
}
