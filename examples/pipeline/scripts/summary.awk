# build/daily/<station>.csv files -> one row per station:
# station,days,mean_c,coldest_c,coldest_day,warmest_c,warmest_day (mean_c: mean of daily means).
function flush() {
    if (days) printf "%s,%d,%.1f,%.1f,%s,%.1f,%s\n", station, days, sum / days, lo, lo_day, hi, hi_day
}
BEGIN { FS = ","; print "station,days,mean_c,coldest_c,coldest_day,warmest_c,warmest_day" }
FNR == 1 {
    flush()
    station = FILENAME; sub(/.*\//, "", station); sub(/\.csv$/, "", station)
    days = 0; sum = 0; lo = ""; hi = ""
    next
}
{
    days++; sum += $4
    if (lo == "" || $2 + 0 < lo) { lo = $2 + 0; lo_day = $1 }
    if (hi == "" || $3 + 0 > hi) { hi = $3 + 0; hi_day = $1 }
}
END { flush() }
