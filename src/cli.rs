//! The command line. Doc comments are the help text; environment variables are declared with their flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build a minimal, reproducible OCI image for Python training code — no Docker daemon, no root,
/// no Dockerfile. `vxbuild --push --image REGION-docker.pkg.dev/PROJECT/REPO/IMAGE` in the folder
/// holding train.py and requirements.txt is all it takes.
#[derive(Debug, Parser)]
#[command(
    name = "vxbuild",
    version,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the image for a project folder (the default command).
    Build(BuildArgs),
    /// Resolve the base and the dependencies and write vxbuild.lock, without building.
    Lock(LockArgs),
}

#[derive(Debug, Args, Clone)]
pub struct LockArgs {
    /// Re-resolve every dependency and move the base to its tag's current digest.
    #[arg(long)]
    pub upgrade: bool,
    #[command(flatten)]
    pub build: BuildArgs,
}

/// What the command line asks for.
pub enum Action {
    Build(BuildArgs),
    Lock(LockArgs),
}

impl Cli {
    pub fn into_build_args(self) -> BuildArgs {
        match self.into_action() {
            Action::Build(a) => a,
            Action::Lock(l) => l.build,
        }
    }

    pub fn into_action(self) -> Action {
        match self.command {
            Some(Command::Build(a)) => Action::Build(a),
            Some(Command::Lock(l)) => Action::Lock(l),
            None => Action::Build(self.build),
        }
    }
}

#[derive(Debug, Args, Default, Clone)]
pub struct BuildArgs {
    /// The project folder: its files go to /usr/app in the image.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The training script, relative to DIR (gcloud's --script); `python SCRIPT` for .py files,
    /// `/bin/bash SCRIPT` otherwise. Defaults to train.py when it exists.
    #[arg(long, value_name = "FILE", conflicts_with = "python_module")]
    pub script: Option<String>,

    /// Run a module instead of a script: `python -m MODULE` (gcloud's --python-module).
    #[arg(long, value_name = "MODULE")]
    pub python_module: Option<String>,

    /// Extra requirement specifiers, installed after requirements.txt.
    #[arg(long, value_name = "SPEC[,SPEC...]", value_delimiter = ',')]
    pub requirements: Vec<String>,

    /// Local wheel files, relative to DIR.
    #[arg(long, value_name = "PATH[,PATH...]", value_delimiter = ',')]
    pub extra_packages: Vec<PathBuf>,

    /// Extra folders (relative to DIR) copied to the same relative path under /usr/app, even when
    /// an ignore file leaves them out.
    #[arg(long, value_name = "DIR[,DIR...]", value_delimiter = ',')]
    pub extra_dirs: Vec<PathBuf>,

    /// The base image [default: python:3.9-slim].
    #[arg(long, value_name = "REF", alias = "executor-image-uri")]
    pub base_image: Option<String>,

    /// The image to build, e.g. us-central1-docker.pkg.dev/PROJECT/REPO/IMAGE[:TAG].
    #[arg(long, value_name = "REF", alias = "output-image-uri")]
    pub image: Option<String>,

    /// Push the image to --image.
    #[arg(long)]
    pub push: bool,

    /// Also write the image locally: oci:DIR[:TAG] (an OCI image layout) or oci-archive:FILE[:TAG].
    /// Repeatable.
    #[arg(long, value_name = "DEST")]
    pub output: Vec<String>,

    /// pip's --index-url.
    #[arg(long, value_name = "URL", env = "PIP_INDEX_URL")]
    pub index_url: Option<String>,

    /// pip's --extra-index-url (repeatable; the variable takes a space-separated list).
    #[arg(
        long,
        value_name = "URL",
        env = "PIP_EXTRA_INDEX_URL",
        value_delimiter = ' '
    )]
    pub extra_index_url: Vec<String>,

    /// pip's --find-links: a folder of wheels or a URL (repeatable; the variable takes a
    /// space-separated list).
    #[arg(
        long,
        value_name = "DIR|URL",
        env = "PIP_FIND_LINKS",
        value_delimiter = ' '
    )]
    pub find_links: Vec<String>,

    /// pip's --no-index: use only --find-links.
    #[arg(long, env = "PIP_NO_INDEX", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_index: bool,

    /// Where vxbuild keeps base images, wheels and layers [default: $XDG_CACHE_HOME/vxbuild or
    /// ~/.cache/vxbuild].
    #[arg(long, value_name = "DIR", env = "VXBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Source files larger than this are left out of the image, each named on stderr
    /// (e.g. 10MB, 500k, 1GiB) [default: 10MB].
    #[arg(long, value_name = "SIZE")]
    pub max_file_size: Option<String>,

    /// Allow plain HTTP (or unverified TLS) to this registry; loopback registries are allowed by
    /// default, as docker does. Repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,

    /// How new layers are compressed: gzip (read everywhere) or zstd (faster and smaller; needs
    /// containerd 1.5+, podman or CRI-O on the machines that pull).
    #[arg(long, value_name = "CODEC", value_parser = ["gzip", "zstd"])]
    pub compression: Option<String>,

    /// Where the base's unpacked root filesystem and pip's staging roots go: `auto` puts them in
    /// memory (/dev/shm) when they fit, `disk` in the cache folder.
    #[arg(long, value_name = "WHERE", env = "VXBUILD_SCRATCH", value_parser = ["auto", "disk"])]
    pub scratch: Option<String>,

    /// Compile the installed dependencies to .pyc in the sandbox (unchecked-hash, reproducible).
    #[arg(long)]
    pub compile_bytecode: bool,

    /// Do not read or write vxbuild.lock: resolve afresh and leave no lock behind.
    #[arg(long, conflicts_with = "locked")]
    pub no_lock: bool,

    /// Fail instead of re-locking when vxbuild.lock is missing or does not match its inputs.
    #[arg(long)]
    pub locked: bool,

    /// Parallel downloads and uploads.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,

    /// Print nothing on stderr but errors and warnings.
    #[arg(long, short, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also print each registry request (method, URL without its query, status) and where
    /// credentials came from. Secrets are never printed.
    #[arg(long, short)]
    pub verbose: bool,
}
