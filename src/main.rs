fn main() -> std::process::ExitCode {
    certgate::cli::main()
}
