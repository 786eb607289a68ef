"""The lane's business logic, sans-IO: transactions, barrier interlock, fees, status lists."""
