//! `astramq passwd`: create and update password files in Mosquitto's format, so a file
//! works with both `mosquitto` and `astramq`. Flags follow `mosquitto_passwd`.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use auth::PasswordFile;
use clap::Args;

/// `astramq passwd [-c] [-b] [-D] FILE USER [PASSWORD]`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Create a new file, replacing any existing one.
    #[arg(short = 'c')]
    pub create: bool,
    /// Take the password from the command line instead of standard input.
    #[arg(short = 'b')]
    pub batch: bool,
    /// Delete USER from the file.
    #[arg(short = 'D')]
    pub delete: bool,
    /// The password file.
    pub file: PathBuf,
    /// The user name.
    pub username: String,
    /// The password (with -b).
    pub password: Option<String>,
}

/// Runs the command.
pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    if args.create && args.delete {
        bail!("-c and -D cannot be used together");
    }
    let mut file = if args.create {
        PasswordFile::default()
    } else {
        PasswordFile::load(&args.file)?
    };
    if args.delete {
        if !file.remove(&args.username) {
            bail!(
                "user {} not found in {}",
                args.username,
                args.file.display()
            );
        }
    } else {
        let password = match (args.batch, args.password) {
            (true, Some(p)) => p,
            (true, None) => bail!("-b needs a password after the user name"),
            (false, Some(_)) => bail!("a password on the command line needs -b"),
            (false, None) => read_password()?,
        };
        file.set(&args.username, password.as_bytes())?;
    }
    file.save(&args.file)?;
    Ok(())
}

/// Reads the password from the first line of standard input.
fn read_password() -> anyhow::Result<String> {
    eprint!("Password: ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}
