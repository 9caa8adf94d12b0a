-- wrk script: keep-alive connections whose requests switch between two tenants' Hosts
-- (a.test and b.test, every other request of the thread). One shared server serves
-- both; mpm-itk must close such a connection; condo hands it between tenant workers.
local n = 0

request = function()
    n = n + 1
    local host = (n % 2 == 0) and "b.test" or "a.test"
    return wrk.format(nil, nil, { ["Host"] = host })
end
