# raw/<station>.csv -> timestamp,temp_c: drop comments, the header and readings the station
# could not take ("n/a", empty), convert Fahrenheit to Celsius, one decimal.
# The caller sorts the result, so rows exported out of order come out in time order.
BEGIN { FS = "," }
/^#/ || $1 == "timestamp" { next }
NF != 4 || $3 !~ /^-?[0-9]+(\.[0-9]+)?$/ { next }
{
    t = ($4 == "F") ? ($3 - 32) * 5 / 9 : $3 + 0
    printf "%s,%.1f\n", $1, t
}
