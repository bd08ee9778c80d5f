# Sorted timestamp,temp_c rows -> one row per day: date,min_c,max_c,mean_c,readings.
function flush() {
    if (n) printf "%s,%.1f,%.1f,%.1f,%d\n", day, lo, hi, sum / n, n
}
BEGIN { FS = ","; print "date,min_c,max_c,mean_c,readings" }
{
    d = substr($1, 1, 10)
    if (d != day) { flush(); day = d; n = 0; sum = 0; lo = $2 + 0; hi = $2 + 0 }
    n++; sum += $2
    if ($2 + 0 < lo) lo = $2 + 0
    if ($2 + 0 > hi) hi = $2 + 0
}
END { flush() }
