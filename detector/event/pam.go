package event

import "strconv"

// PAM return values (Linux-PAM's _pam_types.h), as Result holds them for the
// authentication kinds.
const (
	PAMSuccess     = 0
	PAMPermDenied  = 6
	PAMAuthErr     = 7
	PAMUserUnknown = 10
	PAMMaxTries    = 11
	PAMAcctExpired = 13
)

var pamNames = [...]string{
	"PAM_SUCCESS", "PAM_OPEN_ERR", "PAM_SYMBOL_ERR", "PAM_SERVICE_ERR",
	"PAM_SYSTEM_ERR", "PAM_BUF_ERR", "PAM_PERM_DENIED", "PAM_AUTH_ERR",
	"PAM_CRED_INSUFFICIENT", "PAM_AUTHINFO_UNAVAIL", "PAM_USER_UNKNOWN",
	"PAM_MAXTRIES", "PAM_NEW_AUTHTOK_REQD", "PAM_ACCT_EXPIRED",
	"PAM_SESSION_ERR", "PAM_CRED_UNAVAIL", "PAM_CRED_EXPIRED", "PAM_CRED_ERR",
	"PAM_NO_MODULE_DATA", "PAM_CONV_ERR", "PAM_AUTHTOK_ERR",
	"PAM_AUTHTOK_RECOVERY_ERR", "PAM_AUTHTOK_LOCK_BUSY",
	"PAM_AUTHTOK_DISABLE_AGING", "PAM_TRY_AGAIN", "PAM_IGNORE", "PAM_ABORT",
	"PAM_AUTHTOK_EXPIRED", "PAM_MODULE_UNKNOWN", "PAM_BAD_ITEM",
	"PAM_CONV_AGAIN", "PAM_INCOMPLETE",
}

// PAMResultName names a PAM return value ("PAM_AUTH_ERR"); values it does not
// know are given as a number.
func PAMResultName(r int32) string {
	if r >= 0 && int(r) < len(pamNames) {
		return pamNames[r]
	}
	return strconv.Itoa(int(r))
}

// ParsePAMResult is the inverse of PAMResultName for the names it knows.
func ParsePAMResult(s string) (int32, bool) {
	for i, n := range pamNames {
		if n == s {
			return int32(i), true
		}
	}
	return 0, false
}
