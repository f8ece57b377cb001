#!/usr/bin/env bash
# The airflow-init service of docker-compose.yaml (runs once, as root, before every other Airflow service):
#  1. refuses to go on with a missing or placeholder secret (JWT secret, API secret key, Fernet key), a database
#     password that is empty or the well-known default (airflow / warehouse), or a user without a password, saying
#     which and how to make one;
#  2. creates the writable folders (Data Docs and run reports, logs, the login file) owned by AIRFLOW_UID;
#  3. writes the simple auth manager's passwords file from AIRFLOW_PASSWORDS;
#  4. migrates Airflow's metadata database (skipped with BILLING_INIT_SKIP_MIGRATE=1, for the static test).
set -euo pipefail

fail() {
    echo "airflow-init: $*" >&2
    echo "airflow-init: nothing was started; set the value in .env (see .env.example) and run 'docker compose up' again." >&2
    exit 1
}

placeholder() {  # empty, or a value copied from an example
    [[ -z "$1" || "$1" == change-me* || "$1" == "CHANGE_ME"* ]]
}

placeholder "${AIRFLOW__API_AUTH__JWT_SECRET:-}" && fail "AIRFLOW_JWT_SECRET is empty or the example's placeholder: \
every api-server and the scheduler sign task tokens with it. Make one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
placeholder "${AIRFLOW__API__SECRET_KEY:-}" && fail "AIRFLOW_API_SECRET_KEY is empty or the example's placeholder. \
Make one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
placeholder "${AIRFLOW__CORE__FERNET_KEY:-}" && fail "AIRFLOW_FERNET_KEY is empty: connection passwords would be stored \
unencrypted. Make one: python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"

weak_database_password() {  # $1: the password, $2: the database user (its name is the default everyone knows)
    [[ -z "$1" || "$1" == "$2" || "$1" == change-me* || "$1" == "CHANGE_ME"* || ${#1} -lt 12 ]]
}
weak_database_password "${AIRFLOW_DB_PASSWORD:-}" airflow && fail "AIRFLOW_DB_PASSWORD (the metadata database's \
user airflow) is empty, the default 'airflow', a placeholder or shorter than 12 characters: anyone who reaches the \
database would read every connection and answer. Make one: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
weak_database_password "${WAREHOUSE_DB_PASSWORD:-}" warehouse && fail "WAREHOUSE_DB_PASSWORD (the warehouse's user \
warehouse) is empty, the default 'warehouse', a placeholder or shorter than 12 characters. Make one: \
python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"

PYTHON="${PYTHON:-python}"
"$PYTHON" - <<'PY' || exit 1
import base64, binascii, json, os, sys

def fail(message):
    print(f"airflow-init: {message}", file=sys.stderr)
    print("airflow-init: nothing was started; set the value in .env (see .env.example) and run 'docker compose up' again.",
          file=sys.stderr)
    sys.exit(1)

try:
    key = base64.urlsafe_b64decode(os.environ["AIRFLOW__CORE__FERNET_KEY"].encode())
except (binascii.Error, ValueError):
    key = b""
if len(key) != 32:
    fail("AIRFLOW_FERNET_KEY is not a Fernet key (32 url-safe base64-encoded bytes). Make one: "
         "python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'")

users = [pair.split(":", 1)[0].strip() for pair in os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "").split(",")
         if pair.strip()]
if not users:
    fail("AIRFLOW_USERS names no user (user:role pairs, e.g. admin:admin,finance:op)")
try:
    passwords = json.loads(os.environ.get("AIRFLOW_PASSWORDS") or "{}")
except ValueError as error:
    fail(f"AIRFLOW_PASSWORDS is not JSON ({error}); write it as '{{\"admin\": \"<password>\"}}'")
if not isinstance(passwords, dict):
    fail("AIRFLOW_PASSWORDS must be a JSON object: '{\"admin\": \"<password>\"}'")
missing = [user for user in users if not str(passwords.get(user) or "").strip()]
if missing:
    fail(f"no password in AIRFLOW_PASSWORDS for {', '.join(missing)} (AIRFLOW_USERS names them)")
weak = [user for user in users if str(passwords[user]).startswith("change-me") or str(passwords[user]) == user]
if weak:
    fail(f"the password of {', '.join(weak)} is a placeholder or the user's name: choose your own")
PY

uid="${AIRFLOW_UID:-50000}"
auth_dir="${AIRFLOW_AUTH_DIR:-/opt/airflow/auth}"
passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$auth_dir/passwords.json}"
for folder in "${BILLING_DATA_DOCS_DIR:-/opt/airflow/var/data_docs}" "${AIRFLOW__LOGGING__BASE_LOG_FOLDER:-/opt/airflow/logs}" \
    "$auth_dir" "$(dirname "$passwords_file")"; do
    mkdir -p "$folder"
    chown -R "$uid:0" "$folder"
    chmod -R u+rwX,g+rwX "$folder"
done
(umask 077 && "$PYTHON" -c 'import json, os, sys; json.dump(json.loads(os.environ["AIRFLOW_PASSWORDS"]), open(sys.argv[1], "w"))' \
    "$passwords_file")
chown "$uid:0" "$passwords_file"
chmod 600 "$passwords_file"
echo "airflow-init: secrets set; folders ready for uid $uid; logins for: ${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS}"

if [[ "${BILLING_INIT_SKIP_MIGRATE:-0}" != "1" ]]; then
    airflow db migrate
    airflow version
fi
