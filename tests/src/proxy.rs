//! The laptop's side of the proxy host kind, as `vscode-shim setup --proxy`
//! tells a user to set it up.

use std::fs;

use crate::{Lab, RestoreFile};

/// The laptop's ssh set up for `user` as `setup --proxy` says, with the
/// lab's files put back when dropped.
pub struct ProxyHost {
    pub name: String,
    pub block: String,
    pub known_line: String,
    _config: RestoreFile,
    _known_hosts: RestoreFile,
}

impl ProxyHost {
    /// `setup --proxy` runs on the login node (it reads the job host key
    /// from the cluster's home, making it on first use); its Host block and
    /// known_hosts line go into the laptop's files, as the user would copy
    /// them. Linger 0, so that the last connection ends the job at once.
    pub fn install(lab: &Lab, user: &str, name: &str, profile: &str) -> ProxyHost {
        // What the job asks for: sbatch options, or an HTCondor submit command.
        let job_args = if lab.scheduler() == "htcondor" { "request_memory=100" } else { "--time=10" };
        let printed = lab.sh_ok(
            Some(user),
            "login",
            &format!(
                "vscode-shim setup --proxy --login login --user {user} --name {name} \
                 --identity-file '~/.ssh/id_ed25519' --profile {profile} -- {job_args}"
            ),
        );
        let start = printed.find("\nHost ").expect("a Host block in setup --proxy's output") + 1;
        let block = &printed[start..];
        let block = block[..block.find("\n\n").expect("a blank line after the block") + 1].to_owned();
        assert!(block.contains("    ProxyCommand ssh -T -l "), "{block}");
        let block = block.replace(" vscode-shim proxy ", " vscode-shim proxy --linger 0 ");
        let alias = "vscode-slurm-job.login ";
        let known_line = printed
            .lines()
            .find(|l| l.starts_with(alias))
            .expect("a known_hosts line in setup's output")
            .to_owned();
        let public =
            fs::read_to_string(lab.dir.join(format!("home/{user}/.ssh/vscode-slurm-job-host-key.pub")))
                .expect("setup --proxy made the job host key in the cluster home");
        assert!(known_line.ends_with(public.split_whitespace().nth(1).unwrap()), "{known_line} vs {public}");

        let ssh_dir = lab.dir.join(format!("laptop-home/{user}/.ssh"));
        let config = RestoreFile::new(ssh_dir.join("config"));
        let known_hosts = RestoreFile::new(ssh_dir.join("known_hosts"));
        let mut text = fs::read_to_string(ssh_dir.join("config")).unwrap();
        text.push('\n');
        text.push_str(&block);
        fs::write(ssh_dir.join("config"), text).unwrap();
        let mut known = fs::read_to_string(ssh_dir.join("known_hosts")).unwrap();
        known.push_str(&known_line);
        known.push('\n');
        fs::write(ssh_dir.join("known_hosts"), known).unwrap();
        ProxyHost { name: name.to_owned(), block, known_line, _config: config, _known_hosts: known_hosts }
    }
}
