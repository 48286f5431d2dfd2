module mldeploy.local/pause

go 1.22
