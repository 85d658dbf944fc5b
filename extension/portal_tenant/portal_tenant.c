/*
 * The tenant of a transaction, kept in a setting the app cannot write.
 *
 * portal_tenant.user_id is a superuser-only setting (PGC_SUSET): SET, set_config(), ALTER ROLE ... SET and a
 * function's SET clause all fail for the app's roles with "permission denied to set parameter". Only
 * set_tenant() writes it, and only for the transaction (as SET LOCAL would): after checking, through
 * portal.users' primary key, that the user exists and is active. tenant() returns it, or fails when this
 * transaction has not set one. Policies read `user_id = portal.tenant()`: a STABLE call, so an index condition.
 *
 * A value SET before this library is loaded into the backend is a placeholder; loading the library applies it
 * with the rights of whoever set it, so the app's is dropped with a warning. The prefix is reserved, so no
 * other placeholder can be made under it afterwards.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "nodes/miscnodes.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

PG_MODULE_MAGIC;

#define SETTING "portal_tenant.user_id"

static char *setting_text = NULL;  /* the setting's text, owned by the GUC machinery */
static pg_uuid_t tenant;           /* the setting, parsed by its check hook; valid when tenant_is_set */
static bool tenant_is_set = false;

static bool
check_setting(char **newval, void **extra, GucSource source)
{
    ErrorSaveContext escontext = {T_ErrorSaveContext};
    Datum parsed;
    pg_uuid_t *copy;

    if (*newval == NULL || (*newval)[0] == '\0')
        return true;            /* not set: extra stays NULL */
    if (!DirectInputFunctionCallSafe(uuid_in, *newval, InvalidOid, -1, (Node *) &escontext, &parsed))
    {
        GUC_check_errdetail("The tenant must be a user's id (a uuid).");
        return false;
    }
    copy = guc_malloc(LOG, sizeof(pg_uuid_t));
    if (copy == NULL)
        return false;
    memcpy(copy, DatumGetUUIDP(parsed), sizeof(pg_uuid_t));
    *extra = copy;
    return true;
}

static void
assign_setting(const char *newval, void *extra)
{
    tenant_is_set = extra != NULL;
    if (tenant_is_set)
        memcpy(&tenant, extra, sizeof(pg_uuid_t));
}

void
_PG_init(void)
{
    DefineCustomStringVariable(SETTING,
                               "The tenant of this transaction; written by portal.set_tenant() only.",
                               NULL, &setting_text, "", PGC_SUSET,
                               GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
                               check_setting, assign_setting, NULL);
    MarkGUCPrefixReserved("portal_tenant");
}

/* Whether portal.users holds this id with is_active true, as this statement's snapshot sees it. */
static bool
user_is_active(pg_uuid_t *user_id)
{
    Relation users = table_openrv(makeRangeVar("portal", "users", -1), AccessShareLock);
    Oid relid = RelationGetRelid(users);
    AttrNumber id_column = get_attnum(relid, "id");
    AttrNumber active_column = get_attnum(relid, "is_active");
    Oid primary_key = RelationGetPrimaryKeyIndex(users);
    Snapshot snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
    ScanKeyData key;
    SysScanDesc scan;
    HeapTuple row;
    bool active = false;

    if (id_column == InvalidAttrNumber || active_column == InvalidAttrNumber || !OidIsValid(primary_key))
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                 errmsg("portal.set_tenant: portal.users lacks its id primary key or is_active column")));
    ScanKeyInit(&key, id_column, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(user_id));
    scan = systable_beginscan(users, primary_key, true, snapshot, 1, &key);
    row = systable_getnext(scan);
    if (HeapTupleIsValid(row))
    {
        bool isnull;
        Datum value = heap_getattr(row, active_column, RelationGetDescr(users), &isnull);

        active = !isnull && DatumGetBool(value);
    }
    systable_endscan(scan);
    table_close(users, AccessShareLock);
    return active;
}

PG_FUNCTION_INFO_V1(portal_tenant_set);

Datum
portal_tenant_set(PG_FUNCTION_ARGS)
{
    pg_uuid_t *user_id;
    char *text;

    if (PG_ARGISNULL(0))
        ereport(ERROR,
                (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("portal.set_tenant: no active user NULL")));
    user_id = PG_GETARG_UUID_P(0);
    text = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(user_id)));
    if (!user_is_active(user_id))
        ereport(ERROR,
                (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("portal.set_tenant: no active user %s", text)));
    /* PGC_SUSET: this function's right to write the setting, whoever calls it. */
    (void) set_config_option(SETTING, text, PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
    PG_RETURN_UUID_P(user_id);
}

PG_FUNCTION_INFO_V1(portal_tenant_get);

Datum
portal_tenant_get(PG_FUNCTION_ARGS)
{
    pg_uuid_t *result;

    if (!tenant_is_set)
        ereport(ERROR,
                (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                 errmsg("no tenant set for this transaction"),
                 errhint("BEGIN; SELECT portal.set_tenant(<user id>); ...; COMMIT (in the same transaction)")));
    result = palloc(sizeof(pg_uuid_t));
    memcpy(result, &tenant, sizeof(pg_uuid_t));
    PG_RETURN_UUID_P(result);
}
