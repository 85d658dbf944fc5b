"""The local fleet: real booted Debian hosts (systemd-nspawn) on one machine, with an S3/KMS endpoint."""
