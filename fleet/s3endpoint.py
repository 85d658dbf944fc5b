"""The `s3` host's S3/KMS endpoint: moto server from Debian, with authentication enforced.

moto starts with INITIAL_NO_AUTH_ACTION_COUNT=3: exactly the three unauthenticated IAM calls that create
the fleet's admin user, its policy and its access key; every later request must be signed with real keys.
moto keeps everything in its process (objects over 5 MiB in open, deleted temporary files under /var/lib/moto): a restart
of the endpoint loses every bucket, object, key and user. It runs through fleet/moto_server.py, which fixes three
of moto's faults (its docstring says which).
"""

import base64
import hashlib
import json
import os
import socket
import time
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from fleet.errors import FleetError

PORT = 9000
REGION = "us-east-1"
ADMIN_USER = "fleet-admin"
BOOTSTRAP_ACTIONS = 3
PACKAGES = ("python3-moto", "python3-flask", "python3-flask-cors")
LAUNCHER = Path(__file__).with_name("moto_server.py").read_text()
LAUNCHER_PATH = "/usr/local/lib/mcp-fleet/moto_server.py"
UNIT = f"""[Unit]
Description=S3 and KMS endpoint of the local fleet (moto server, in memory)
After=network.target

[Service]
Environment=INITIAL_NO_AUTH_ACTION_COUNT={BOOTSTRAP_ACTIONS}
# moto keeps each object over 5 MiB in a temporary file, open while the object lives: on the host's disk, not
# the small private /tmp, and with room for many (locked versions stay for the recovery window).
Environment=TMPDIR=/var/lib/moto
StateDirectory=moto
LimitNOFILE=1048576
# {LAUNCHER_PATH} is fleet/moto_server.py, sha256 {hashlib.sha256(LAUNCHER.encode()).hexdigest()}: a new one restarts moto.
ExecStart=/usr/bin/python3 {LAUNCHER_PATH} -H 0.0.0.0 -p {PORT}
DynamicUser=yes
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
# What an environment's cloud account provides the tier (in prod: the operator, docs/backups.md): a versioned
# bucket with S3 Object Lock, a KMS key, and users. Database hosts may put, get and list, never delete; only
# retention deletes, and only versions whose lock has expired.
BUCKET = "mcp-portal-archive"
# Every new version is locked in COMPLIANCE mode (no key can shorten it or delete through it) while a restore may
# need it: the recovery window (backup_retention_days, 30) and the age of the backup a restore to its start may
# need (backup_max_age_h, 26 h; the fleet's backups are all full). The preflight refuses a shorter lock.
LOCK = {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 32}}
# tier.json key: (alias, description). The data key's master key wraps the portal's data keys (hostside/envelope.py).
KMS_KEYS = {"kms_key_id": ("alias/mcp-portal-archive", "the MCP Portal tier's archive key"),
            "data_kms_key_id": ("alias/mcp-portal-data", "the MCP Portal's data-key master key")}
# moto authorizes HeadBucket as an action of its own ("s3:HeadBucket"); AWS counts it as s3:ListBucket.
READ_WRITE = ["s3:PutObject", "s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions",
              "s3:GetBucketLocation", "s3:HeadBucket", "s3:GetBucketObjectLockConfiguration",
              "kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]
# Denied to every tier user: the calls that would weaken a lock (moto authorizes PutObjectRetention as PutObject
# and honours the bypass header without checking it, so on the fleet only COMPLIANCE mode stops them).
LOCK_CHANGES = ["s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:BypassGovernanceRetention",
                "s3:PutBucketObjectLockConfiguration"]
TIER_USERS = {
    "wal-archiver": READ_WRITE,
    "backup-retention": READ_WRITE + ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:GetObjectRetention"],
    # Makes and unwraps data keys (key rotation on the database hosts, and the app); touches no object.
    "portal-keys": ["kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey"],
}


def tier_policy(actions):
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"},
                                                   {"Effect": "Deny", "Action": LOCK_CHANGES, "Resource": "*"}]}


def endpoint_url(host):
    return f"http://{host.address}:{PORT}"


def client(service, credentials, **extra):
    made = boto3.client(
        service, endpoint_url=credentials["endpoint"], region_name=credentials["region"],
        aws_access_key_id=credentials["access_key_id"], aws_secret_access_key=credentials["secret_access_key"],
        config=botocore.config.Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=20), **extra,
    )
    for operation in ("PutObject", "CopyObject", "PutObjectRetention"):
        made.meta.events.register(f"before-sign.s3.{operation}", _content_md5)
    return made


def _content_md5(request, **_):
    """moto refuses any write into a bucket with a default lock without Content-MD5 (S3 takes the SDK's own
    checksum instead, which botocore sends by default now)."""
    if "Content-MD5" not in request.headers:
        body = request.body or b""
        if hasattr(body, "read"):
            start = body.tell()
            data = body.read()
            body.seek(start)
        else:
            data = body.encode() if isinstance(body, str) else body
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(data).digest()).decode()


class S3Endpoint:
    def __init__(self, layout, access, host):
        self.access = access
        self.host = host
        self.credentials_file = layout.local / "s3.json"

    def ensure(self, say, others_cut_off):
        """`others_cut_off`: a context manager that keeps every other host off the network while it is open."""
        installed = self.access.run(self.host.name, f"dpkg-query -W -f='${{Status}}' {PACKAGES[0]}", check=False).stdout
        if "install ok installed" not in installed:
            say(f"{self.host.name}: installing {', '.join(PACKAGES)} through the apt proxy")
            self.access.run(
                self.host.name,
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                + " ".join(PACKAGES),
                timeout=600,
            )
        self.access.run(self.host.name, f"install -d -m 0755 {os.path.dirname(LAUNCHER_PATH)} && cat > {LAUNCHER_PATH}.new && "
                                        f"chmod 0644 {LAUNCHER_PATH}.new && mv {LAUNCHER_PATH}.new {LAUNCHER_PATH}",
                        input_text=LAUNCHER)  # read by moto's dynamic user
        self.access.run(
            self.host.name,
            "cat > /etc/systemd/system/moto.service.new && if ! cmp -s /etc/systemd/system/moto.service.new /etc/systemd/system/moto.service; "
            "then mv /etc/systemd/system/moto.service.new /etc/systemd/system/moto.service && systemctl daemon-reload && systemctl enable --quiet moto "
            "&& systemctl restart moto; else rm /etc/systemd/system/moto.service.new; systemctl start moto; fi",
            input_text=UNIT,
        )
        self._wait_port()
        # Keys made for this run of the endpoint are still good; any other run has forgotten them. Asking
        # the endpoint instead would spend one of its unauthenticated actions.
        invocation = self._invocation()
        if (self.credentials() or {}).get("invocation") == invocation and self._tier_file("tier").exists():
            return
        if (self.credentials() or {}).get("invocation") == invocation:
            self._provision_tier()
            return
        if not self._bootstrap(invocation):
            # Hosts that boot with a cluster (a stopped fleet taken over) ask for WAL at once, and every request
            # spends one of the window's actions: the second try has the endpoint to ourselves.
            say(f"{self.host.name}: the endpoint answered unauthenticated calls before ours; restarting it with the other "
                "hosts cut off (it held nothing we can read)")
            with others_cut_off():
                self.access.run(self.host.name, "systemctl restart moto")
                self._wait_port()
                bootstrapped = self._bootstrap(self._invocation())
            if not bootstrapped:
                raise FleetError(f"could not create the fleet's S3 user on {self.host.name}; see `fleet ssh {self.host.name} journalctl -u moto`")
        self._provision_tier()
        say(f"{self.host.name}: S3/KMS endpoint up at {endpoint_url(self.host)}, authentication enforced")

    def _invocation(self):
        return self.access.run(self.host.name, "systemctl show --property=InvocationID --value moto").stdout.strip()

    def _wait_port(self, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((str(self.host.address), PORT), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise FleetError(f"the S3 endpoint on {self.host.name}:{PORT} did not answer within {timeout}s; see `fleet ssh {self.host.name} journalctl -u moto`") from None
                time.sleep(0.3)

    def credentials(self):
        try:
            return json.loads(self.credentials_file.read_text())
        except (OSError, ValueError):
            return None

    def _bootstrap(self, invocation):
        """Spend the endpoint's unauthenticated window on our admin user; False if the window is gone."""
        anonymous = {"endpoint": endpoint_url(self.host), "region": REGION, "access_key_id": "bootstrap", "secret_access_key": "bootstrap"}
        iam = client("iam", anonymous)
        try:
            iam.create_user(UserName=ADMIN_USER)
            iam.put_user_policy(UserName=ADMIN_USER, PolicyName="fleet-admin", PolicyDocument=json.dumps(ADMIN_POLICY))
            key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        except botocore.exceptions.ClientError:
            return False
        credentials = dict(anonymous, access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"], invocation=invocation)
        self.credentials_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(credentials, out, indent=2)
        return True

    def _tier_file(self, name):
        return self.credentials_file.parent / "s3" / f"{name}.json"

    def _provision_tier(self):
        """The bucket (versioned, Object Lock), KMS key and users the tier's archive and backups use; their keys and the
        bucket's coordinates go to .fleet/s3/ (0600), where group_data/local.py points the deploy."""
        admin = self.credentials()
        s3, iam, kms = client("s3", admin), client("iam", admin), client("kms", admin)
        s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        s3.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                                                                 "Rule": LOCK})
        written = {"tier": {"endpoint_url": admin["endpoint"], "region": admin["region"], "bucket": BUCKET}}
        for field, (alias, description) in KMS_KEYS.items():
            key_id = kms.create_key(Description=description)["KeyMetadata"]["KeyId"]
            try:
                kms.create_alias(AliasName=alias, TargetKeyId=key_id)
            except kms.exceptions.AlreadyExistsException:  # made by an earlier checkout on this endpoint run
                kms.update_alias(AliasName=alias, TargetKeyId=key_id)
            written["tier"][field] = key_id
        for user, actions in TIER_USERS.items():
            try:
                iam.create_user(UserName=user)
            except iam.exceptions.EntityAlreadyExistsException:
                pass
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(tier_policy(actions)))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            written[user] = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
        self._tier_file("tier").parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, content in written.items():
            fd = os.open(self._tier_file(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(content, out, indent=2)

    def forget(self):
        self.credentials_file.unlink(missing_ok=True)
        for name in ("tier", *TIER_USERS):
            self._tier_file(name).unlink(missing_ok=True)
