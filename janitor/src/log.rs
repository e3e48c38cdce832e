//! One line per ended tree where admins look for what cron did: syslog
//! (the journal reads /dev/log too), or stderr where there is no syslog.

use std::ffi::CString;
use std::path::Path;

pub struct Log {
    syslog: bool,
}

impl Log {
    pub fn open() -> Log {
        let syslog = Path::new("/dev/log").exists();
        if syslog {
            // authpriv: the lines name users and their command lines.
            // SAFETY: the ident is a 'static C string, as openlog keeps the pointer.
            unsafe { libc::openlog(c"vscode-janitor".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV) };
        }
        Log { syslog }
    }

    pub fn notice(&self, line: &str) {
        self.write(libc::LOG_NOTICE, line);
    }

    pub fn warning(&self, line: &str) {
        self.write(libc::LOG_WARNING, line);
    }

    fn write(&self, priority: libc::c_int, line: &str) {
        if !self.syslog {
            eprintln!("vscode-janitor: {line}");
            return;
        }
        let Ok(text) = CString::new(line.replace('\0', " ")) else { return };
        // SAFETY: a constant format taking exactly one C string, which is valid and NUL-terminated.
        unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
    }
}
