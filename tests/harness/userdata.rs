//! The product's user-data renderer ([`drover::userdata`]) with the harness's manners: a test
//! that renders something invalid panics, saying why. The tests' [`UserData`] holds what every
//! boot needs; the library's own type (`drover::userdata::UserData`) adds units to enable and a
//! CA for an https download.

pub use drover::userdata::{WriteFile, DOWNLOAD_CA_PATH, DROVER_SERVICE, TEMPLATE};

/// What one instance's user-data says.
#[derive(Debug, Clone)]
pub struct UserData {
    /// Where the binary comes from: an absolute path on the image or an `https://` URL (the
    /// instances are x86_64 containers: pinned for x86_64).
    pub drover_source: String,
    /// The binary's SHA-256, lowercase hex; the install refuses anything else.
    pub drover_sha256: String,
    /// The text of `/etc/drover/config.toml`.
    pub config_toml: String,
    /// More files to write before drover is installed.
    pub extra_files: Vec<WriteFile>,
}

impl UserData {
    /// The filled-in template; panics when the library refuses a value.
    pub fn render(&self) -> String {
        render(&self.product())
    }

    /// The same, as the library's type (which has more to say).
    pub fn product(&self) -> drover::userdata::UserData {
        drover::userdata::UserData {
            binaries: vec![drover::userdata::Pin::new(
                drover::userdata::Arch::X86_64,
                &self.drover_source,
                &self.drover_sha256,
            )],
            config_toml: self.config_toml.clone(),
            extra_files: self.extra_files.clone(),
            ..Default::default()
        }
    }
}

/// Renders `data`; panics when the library refuses a value.
pub fn render(data: &drover::userdata::UserData) -> String {
    data.render()
        .unwrap_or_else(|e| panic!("cannot render user-data: {e}"))
}

/// Fills `template` (see [`drover::userdata::fill`]); panics on a marker it has no value for.
pub fn fill(template: &str, blocks: &[(&str, &str)], inline: &[(&str, &str)]) -> String {
    drover::userdata::fill(template, blocks, inline).unwrap_or_else(|e| panic!("{e}"))
}
